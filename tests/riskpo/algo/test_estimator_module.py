"""The proof that an estimator is one module plus one yaml: a throwaway estimator (its module
written into riskpo/algo/estimators/, its preset into conf/algorithm/) trains end to end with
`riskpo-train algorithm=<it>` for 2 steps, its options typed from its own class and stated in its
preset; both files are removed afterwards, also when the run fails. Nothing else in the tree is
touched (tests/riskpo/data/test_task_module.py is the same proof for a task)."""

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

ESTIMATOR_MODULE = '''"""A throwaway estimator: the reward minus its question's mean, times a scale."""

from __future__ import annotations

from dataclasses import dataclass

from riskpo.algo.baselines import centered, question_groups
from riskpo.algo.registry import AdvantageResult, register_estimator
from riskpo.options import require


@dataclass
class ScaledOptions:
    scale: float = 2.0

    def check(self, key):
        require(self.scale > 0.0, f"{key}.scale", "must be > 0")


@register_estimator("{name}", ScaledOptions)
def _scaled(rewards, question_ids, bundle_ids, options, state, valid):
    advantages = options.scale * centered(rewards, question_groups(rewards, question_ids, valid))
    return AdvantageResult(advantages, {"{name}/scale": float(options.scale)})
'''

PRESET = """# A throwaway estimator's preset: its options schema, and what differs from its defaults.
defaults:
  - options: {name}
  - _self_
name: {name}
options:
  scale: 3.0
"""


def test_an_estimator_is_one_module_plus_one_yaml(throwaway_files, tmp_path):
    name = f"throwaway_{uuid.uuid4().hex[:8]}"
    throwaway_files(ROOT / "riskpo" / "algo" / "estimators" / f"{name}.py",
                    ESTIMATOR_MODULE.replace("{name}", name))
    throwaway_files(ROOT / "conf" / "algorithm" / f"{name}.yaml", PRESET.format(name=name))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "launch.train", f"algorithm={name}", f"run_dir={run_dir}",
               "trainer.total_steps=2", "trainer.prompts_per_step=5", "trainer.samples_per_prompt=4",
               "trainer.eval_every=0", "trainer.eval_before_training=false", "trainer.save_every=0",
               "model.warmstart.enabled=false", f"model.warmstart.cache_dir={tmp_path / 'cache'}",
               "data.eval.size=5", "data.eval_samples=2", "data.eval_greedy=false",
               "logger.backend=none", "logger.progress=none", "logger.plots=false"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows] == [1, 2]
    assert all(row[f"{name}/scale"] == 3.0 for row in rows)  # the preset's option reached it
    assert all("adv/mean" in row and "actor/loss" in row for row in rows)
    recorded = OmegaConf.load(run_dir / "config.yaml")
    assert recorded.algorithm.name == name and dict(recorded.algorithm.options) == {"scale": 3.0}
