"""The driver tokenizes prompts without importing model code: a riskpo-train command that stops
at a config or data error, or that only plans its run, does not pay for transformers' modeling
modules (about 3 s of every driver start here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

DRIVER_SIDE = """
import sys
from riskpo.data.loaders import DataConfig, load_checked_data
from riskpo.models.config import ModelConfig
from riskpo.models.loading import prompt_length_counter, prompt_tokenizer

train, held_out = load_checked_data(DataConfig(), prompt_length_counter(prompt_tokenizer(ModelConfig())))
assert train and held_out
print(sorted(m for m in ("transformers.modeling_utils", "transformers.models.llama.modeling_llama")
             if m in sys.modules))
"""


@pytest.mark.slow
def test_tokenizing_prompts_loads_no_model_code():
    result = subprocess.run([sys.executable, "-c", DRIVER_SIDE], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_loading_a_model_still_works(tmp_path):
    from riskpo.models.loading import load_model_and_tokenizer
    from riskpo.models.tiny import build_tiny_model

    directory = build_tiny_model(tmp_path / "m", hidden_size=16, num_layers=1, num_heads=1,
                                 head_dim=16, intermediate_size=32)
    model, tokenizer = load_model_and_tokenizer(directory)
    assert model.config.num_hidden_layers == 1 and len(tokenizer) == model.config.vocab_size
