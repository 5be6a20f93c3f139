"""The run directory's rules without running anything (launch/run_dir.py): what holds a run,
what a fresh run does with one (refuse, overwrite, new), what a resume may change and what it
may not, a resume with nothing left to train. Milliseconds each; the CLI cases are in
tests/launch/test_run_directory.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from launch.config import compose_config, validate
from launch.run_dir import (
    RunFinished,
    apply_plan,
    check_resume_config,
    holds_run,
    next_free_dir,
    plan_run,
    resumable,
)
from riskpo.options import ConfigError
from riskpo.run.record import config_text


def resolved(*overrides: str) -> tuple:
    cfg = compose_config(list(overrides))
    return validate(cfg), OmegaConf.to_container(cfg, resolve=True)


def fake_run(run_dir: Path, steps: int = 4, checkpoints: tuple[int, ...] = (3, 4),
             *overrides: str) -> Path:
    """A run directory as a finished run leaves it (without the learner's files)."""
    run_dir.mkdir(parents=True)
    _, config = resolved(*overrides, f"run_dir={run_dir}", f"trainer.total_steps={steps}")
    (run_dir / "config.yaml").write_text(config_text(config))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, steps + 1)))
    for step in checkpoints:
        path = run_dir / "checkpoints" / f"step_{step:06d}"
        path.mkdir(parents=True)
        (path / "driver_meta.json").write_text(json.dumps({"step": step}))
        (path / "COMPLETE").write_text(str(step))
    return run_dir


def test_what_holds_a_run(tmp_path):
    assert not holds_run(tmp_path / "missing")
    (tmp_path / "console.log").write_text("riskpo-compare writes this before the run")
    (tmp_path / "checkpoints").mkdir()
    assert not holds_run(tmp_path)  # an empty checkpoints/ and a console log are no run
    (tmp_path / "events.jsonl").write_text("{}\n")
    assert holds_run(tmp_path)


def test_a_fresh_run_into_a_run_is_refused_unless_the_policy_says(tmp_path):
    run_dir = fake_run(tmp_path / "R")
    run, config = resolved(f"run_dir={run_dir}")
    with pytest.raises(ConfigError) as refused:
        plan_run(run, config, run_dir)
    assert refused.value.key == "run_dir" and "steps 1-4, checkpoint step_000004" in str(refused.value)
    assert "resume=auto" in str(refused.value) and f"{run_dir}-2" in str(refused.value)
    run, config = resolved(f"run_dir={run_dir}", "run_dir_policy=new")
    (tmp_path / "R-2").mkdir()  # empty: free
    assert plan_run(run, config, run_dir).run_dir == tmp_path / "R-2"
    run, config = resolved(f"run_dir={run_dir}", "run_dir_policy=overwrite")
    plan = plan_run(run, config, run_dir)
    (run_dir / "console.log").write_text("kept")
    apply_plan(plan)
    assert not holds_run(run_dir) and (run_dir / "console.log").read_text() == "kept"


def test_next_free_dir_skips_those_holding_runs(tmp_path):
    fake_run(tmp_path / "R")
    fake_run(tmp_path / "R-2")
    assert next_free_dir(tmp_path / "R") == tmp_path / "R-3"


def test_a_policy_with_a_resume_is_refused(tmp_path):
    run, config = resolved(f"run_dir={tmp_path}", "resume=auto", "run_dir_policy=overwrite")
    with pytest.raises(ConfigError, match="run_dir_policy"):
        plan_run(run, config, tmp_path)


def test_a_resume_may_change_only_the_resumable_keys(tmp_path):
    run_dir = fake_run(tmp_path / "R")
    _, config = resolved(f"run_dir={run_dir}", "trainer.total_steps=8", "trainer.eval_every=2",
                         "logger.progress=plain", "cluster.address=10.0.0.1:6379",
                         "cluster.connect_timeout_s=5", "resume=auto")
    changes = check_resume_config(run_dir, config)
    assert "trainer.total_steps: 4 -> 8" in changes and "cluster.address: None -> '10.0.0.1:6379'" in changes
    assert not any(change.startswith("resume") for change in changes)
    for fixed in ("seed=3", "algorithm.options.beta=0.9", "learner.lr=1e-4", "data.train.size=100",
                  "rollout.temperature=0.7", "trainer.prompts_per_step=5", "model.tiny.init_seed=1",
                  "cluster.learner_gpus_per_rank=1"):
        _, config = resolved(f"run_dir={run_dir}", "resume=auto", fixed)
        with pytest.raises(ConfigError) as refused:
            check_resume_config(run_dir, config)
        key, value = fixed.split("=")
        assert refused.value.key == "resume" and f"{key} " in str(refused.value), fixed
        assert "trainer.total_steps" in refused.value.fix  # says what may change


def test_options_added_since_the_run_started_are_noted_not_refused(tmp_path):
    run_dir = fake_run(tmp_path / "R")
    recorded = OmegaConf.load(run_dir / "config.yaml")
    del recorded.trainer["max_skipped_updates"]
    recorded.data.train["an_option_since_removed"] = 1
    OmegaConf.save(recorded, run_dir / "config.yaml")
    _, config = resolved(f"run_dir={run_dir}", "resume=auto")
    notes = check_resume_config(run_dir, config)
    assert any("trainer.max_skipped_updates=3" in note for note in notes)
    assert any("data.train.an_option_since_removed" in note for note in notes)


def test_a_run_whose_config_holds_a_moved_key_is_not_resumed(tmp_path):
    """A run written before a key moved (algorithm.alpha -> algorithm.options.alpha) is refused
    in one line naming the new key, not resumed with the key dropped as "removed"."""
    run_dir = fake_run(tmp_path / "R")
    recorded = OmegaConf.load(run_dir / "config.yaml")
    options = recorded.algorithm.pop("options")
    for name, value in options.items():
        recorded.algorithm[name] = value
    OmegaConf.save(recorded, run_dir / "config.yaml")
    run, config = resolved(f"run_dir={run_dir}", "resume=auto")
    with pytest.raises(ConfigError) as refused:
        plan_run(run, config, run_dir)
    assert refused.value.key == "resume" and len(str(refused.value).splitlines()) == 1
    assert "has algorithm.advantage_form, which is algorithm.options.advantage_form now" in str(refused.value)


def test_resumable_patterns():
    assert resumable("logger.progress") and resumable("cluster.learner_resource")
    assert not resumable("cluster.learner_gpus_per_rank") and not resumable("trainer.prompts_per_step")


@pytest.mark.parametrize("total_steps", [4, 2])
def test_a_resume_with_nothing_to_train_is_refused_before_anything(tmp_path, total_steps):
    run_dir = fake_run(tmp_path / "R")
    run, config = resolved(f"run_dir={run_dir}", "resume=auto", f"trainer.total_steps={total_steps}")
    with pytest.raises(RunFinished, match=f"at step 4 .*trainer.total_steps={total_steps}"):
        plan_run(run, config, run_dir)


def test_resume_auto_continues_the_newest_checkpoint_and_drops_what_came_after(tmp_path):
    run_dir = fake_run(tmp_path / "R", 4, (2, 4))
    (run_dir / "checkpoints" / "step_000005").mkdir()  # cut short: no COMPLETE
    (run_dir / "summary.json").write_text("{}")
    run, config = resolved(f"run_dir={run_dir}", "resume=auto", "trainer.total_steps=6")
    plan = plan_run(run, config, run_dir)
    assert plan.checkpoint == run_dir / "checkpoints" / "step_000004" and plan.resume_step == 4
    done = apply_plan(plan)
    assert not (run_dir / "checkpoints" / "step_000005").exists()
    assert not (run_dir / "summary.json").exists() and len(done) == 2


def test_resume_from_an_older_checkpoint_drops_the_abandoned_branch(tmp_path):
    run_dir = fake_run(tmp_path / "R", 4, (2, 4))
    run, config = resolved(f"run_dir={run_dir}", f"resume={run_dir}/checkpoints/step_000002",
                           "trainer.total_steps=4")
    plan = plan_run(run, config, run_dir)
    assert plan.resume_step == 2
    apply_plan(plan)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000002"]


def test_a_checkpoint_resumed_into_another_run_is_refused(tmp_path):
    source, other = fake_run(tmp_path / "A"), fake_run(tmp_path / "B")
    run, config = resolved(f"run_dir={other}", f"resume={source}/checkpoints/step_000003",
                           "trainer.total_steps=6")
    with pytest.raises(ConfigError, match="already holds a run"):
        plan_run(run, config, other)
    fresh = tmp_path / "C"
    run, config = resolved(f"run_dir={fresh}", f"resume={source}/checkpoints/step_000003",
                           "trainer.total_steps=6")
    assert plan_run(run, config, fresh).resume_step == 3  # a fresh directory may start from it


@pytest.mark.slow
def test_an_interrupted_run_whose_cleanup_is_stuck_still_exits_with_its_status(tmp_path):
    """riskpo-train arms a watchdog when interrupted: if stopping the workers or Ray hangs, the
    process still exits (with the interrupt's status and its one line), and events.jsonl says
    where each thread was."""
    import subprocess
    import sys
    import time

    code = f"""
import time
from pathlib import Path
from launch.train import _exit_within
from riskpo.run.stops import RunStopped
stop = RunStopped("interrupted at step 3; last complete checkpoint: none", 3)
stop.exit_status = 130
_exit_within(0.5, stop, Path({str(tmp_path)!r}))
time.sleep(60)  # a cleanup that never ends
"""
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert done.returncode == 130 and time.monotonic() - began < 40
    assert done.stderr.strip().splitlines()[-1] == "interrupted at step 3; last complete checkpoint: none"
    event = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[-1])
    assert event["kind"] == "stop/slow_cleanup" and event["step"] == 3
    assert "time.sleep(60)" in event["traceback"] or "<module>" in event["traceback"]
