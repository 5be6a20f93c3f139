"""The proof that a task is one module plus one yaml: a throwaway task (its module written into
riskpo/data/tasks/, its data config into conf/data/) trains end to end with `riskpo-train
data=<it>` for 2 steps and evaluates with its own metric; both files are removed afterwards,
also when the run fails. Nothing else in the tree is touched (tests/riskpo/algo/
test_estimator_module.py is the same proof for an estimator)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from riskpo.run.record import read_metrics

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]

TASK_MODULE = '''"""A throwaway task: reverse the digits of a number ("123>" -> "321")."""

from __future__ import annotations

from dataclasses import dataclass

from riskpo.data.registry import GeneratedTask, register_task
from riskpo.data.rows import Row
from riskpo.data.synthetic import SyntheticProblem
from riskpo.options import require


@dataclass
class ReverseOptions:
    digits: int = 3

    def check(self, key):
        require(self.digits >= 2, f"{key}.digits", "must be >= 2")


def problem(rng, options):
    number = "".join(str(rng.randint(1, 9)) for _ in range(options.digits))
    row = Row(prompt=f"{number}>", data_source="throwaway/{name}",
              reward_model={"style": "rule", "ground_truth": number[::-1]},
              extra_info={"answer_format": "final_number"})
    return SyntheticProblem(row, number[::-1])


@register_task
class Reverse(GeneratedTask):
    name = "{name}"
    options = ReverseOptions
    verifier = "math"
    row_source = "throwaway/{name}"
    tiny_model = "text"
    settings_key = "{name}"

    def problem(self, rng, options):
        return problem(rng, options)

    def problem_metrics(self, row, correct):
        return {"{name}_prompt_digits": float(len(row.prompt) - 1)}
'''

DATA_CONFIG = """# @package _global_
data:
  train: {{source: {name}, size: 200, seed: 0, options: {{digits: 4}}}}
  eval: {{source: {name}, size: 6, seed: 1, options: {{digits: 4}}}}
  template: plain
  max_prompt_length: 8
  eval_samples: 2
  eval_greedy: false
rollout:
  max_new_tokens: 6
"""


def test_a_task_is_one_module_plus_one_yaml(throwaway_files, tmp_path):
    name = f"throwaway_{uuid.uuid4().hex[:8]}"
    throwaway_files(ROOT / "riskpo" / "data" / "tasks" / f"{name}.py",
                    TASK_MODULE.replace("{name}", name))
    throwaway_files(ROOT / "conf" / "data" / f"{name}.yaml", DATA_CONFIG.format(name=name))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "launch.train", f"data={name}", f"run_dir={run_dir}",
               "trainer.total_steps=2", "trainer.prompts_per_step=5", "trainer.samples_per_prompt=4",
               "trainer.eval_every=2", "trainer.eval_before_training=false", "trainer.save_every=0",
               "model.warmstart.enabled=false", f"model.warmstart.cache_dir={tmp_path / 'cache'}",
               "logger.backend=none", "logger.progress=none", "logger.plots=false"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows] == [1, 2]
    assert rows[-1][f"eval/{name}_prompt_digits"] == 4.0  # its own metric, from its module
    assert "eval/avg@2" in rows[-1]
    recorded = OmegaConf.load(run_dir / "config.yaml")
    assert recorded.data.train.source == name and dict(recorded.data.train.options) == {"digits": 4}
