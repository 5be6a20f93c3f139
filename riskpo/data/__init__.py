"""Datasets as checked verl-format rows: the task registry (a task per module in tasks/), the
data options and loaders, prompt templates and the bundle-aware prompt sampler."""

from riskpo.data.files import read_rows
from riskpo.data.loaders import load_dataset, load_train_and_eval
from riskpo.data.registry import Task, register_task, task_named, tasks, verification_request
from riskpo.data.rows import Row, RowError, parse_row
from riskpo.data.sampler import PromptBatch, PromptSampler

__all__ = [
    "PromptBatch", "PromptSampler", "Row", "RowError", "Task", "load_dataset",
    "load_train_and_eval", "parse_row", "read_rows", "register_task", "task_named", "tasks",
    "verification_request",
]
