"""Datasets as checked verl-format rows, the synthetic tasks, prompt templates and the
bundle-aware prompt sampler."""

from riskpo.data.loaders import load_dataset, load_train_and_eval, read_rows
from riskpo.data.rows import Row, RowError, parse_row
from riskpo.data.sampler import PromptBatch, PromptSampler

__all__ = [
    "PromptBatch", "PromptSampler", "Row", "RowError", "load_dataset", "load_train_and_eval",
    "parse_row", "read_rows",
]
