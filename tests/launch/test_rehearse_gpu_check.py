"""bench/gpu_check.py is known to start: its CPU dry run (`--cpu`) runs the whole check at a tiny
scale with Ray, vLLM, Hydra and OmegaConf made unimportable (a borrowed GPU machine may have only
torch, transformers and DeepSpeed) and prints its one table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WITHOUT = ("ray", "vllm", "hydra", "omegaconf")
RUN_WITHOUT = f"""
import importlib.abc, runpy, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {WITHOUT!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent for this test)")
sys.meta_path.insert(0, Absent())
sys.argv = ["bench/gpu_check.py", "--cpu"]
runpy.run_path("bench/gpu_check.py", run_name="__main__")
"""


@pytest.mark.slow
def test_the_gpu_check_dry_run_prints_its_table_without_ray_or_vllm():
    result = subprocess.run([sys.executable, "-c", RUN_WITHOUT], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]  # DeepSpeed logs too
    assert table[:2] == ["| what | value | note |", "|---|---|---|"]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table[2:]}
    assert rows["device"] == "CPU (dry run)" and rows["tokens/s"]
    assert rows["first mini-batch clipped"].endswith("%")
    measured = float(rows["train step peak above state (GiB)"])
    formula = float(next(line for line in table if "train step peak" in line).split("formula ")[1].split()[0])
    assert measured == pytest.approx(formula, rel=0.05)
    assert float(rows["engine-learner log-prob gap"]) < 1e-2
