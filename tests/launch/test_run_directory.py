"""`riskpo-train` on the embedded default, as a user runs it: a run directory is the record of
one run. A fresh run into a directory that holds a run is refused (or told what to do with it),
a resume may change only its length, cadence, logging and placement and is refused otherwise
before anything is written or started, a resume with nothing left to train exits at once, and
a resumed run's records (metrics, prompts, wall time) continue the same run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from riskpo.run.checkpoints import checkpoint_meta, complete_checkpoints
from riskpo.run.record import read_jsonl, read_metrics

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FAST = ["model.warmstart.enabled=false", "trainer.prompts_per_step=5", "trainer.samples_per_prompt=4",
        "data.eval.size=5", "data.eval_samples=2", "data.eval_greedy=false",
        "trainer.eval_before_training=false", "logger.backend=none", "logger.progress=none",
        "logger.plots=false"]
RAY_STARTED = "starting a local cluster"


def riskpo_train(*overrides: str, env: dict[str, str] | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """`riskpo-train FAST OVERRIDES` with its own temp dir, which must hold no Ray directory
    once the command is over (a local cluster the run started is cleaned up)."""
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths
    environment = {k: v for k, v in os.environ.items() if k != "RAY_TMPDIR"}
    environment.update(TMPDIR=str(temp), **(env or {}))
    try:
        result = subprocess.run([sys.executable, "-m", "launch.train", *FAST, *overrides],
                                cwd=ROOT, env=environment, capture_output=True, text=True,
                                timeout=timeout, check=False)
        left = [p.name for p in temp.iterdir() if p.name.startswith("ray")]
        assert not left, f"Ray left {left} under the temp dir"
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return result


def last_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file of a directory and a hash of its bytes."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run, a checkpoint at every step (the newest two kept)."""
    run_dir = tmp_path_factory.mktemp("runs") / "R"
    result = riskpo_train("trainer.total_steps=4", "trainer.save_every=1", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def test_a_fresh_run_into_a_run_directory_is_refused_and_changes_nothing(finished_run):
    before = snapshot(finished_run)
    result = riskpo_train("trainer.total_steps=2", f"run_dir={finished_run}", timeout=120)
    assert result.returncode == 2
    line = last_line(result)
    assert f"{finished_run} already holds a run (steps 1-4, checkpoint step_000004)" in line
    assert "resume=auto" in line and "run_dir=" in line and "run_dir_policy=overwrite" in line
    assert RAY_STARTED not in result.stderr
    assert snapshot(finished_run) == before


def test_a_resume_that_changes_fixed_settings_is_refused_before_anything_starts(finished_run):
    before = snapshot(finished_run)
    result = riskpo_train("trainer.total_steps=6", "resume=auto", "seed=1", "learner.lr=1e-4",
                          f"run_dir={finished_run}", timeout=120)
    assert result.returncode == 2
    line = last_line(result)
    assert "cannot change on resume" in line
    assert "seed 0 -> 1" in line and "learner.lr 2e-05 -> 0.0001" in line
    assert "trainer.total_steps" not in line.split("->")[0]  # a length change is allowed
    assert RAY_STARTED not in result.stderr
    assert snapshot(finished_run) == before
    assert OmegaConf.load(finished_run / "config.yaml").seed == 0


@pytest.mark.parametrize("total_steps", [4, 3])
def test_a_resume_with_nothing_left_to_train_says_so_and_starts_nothing(finished_run, total_steps):
    before = snapshot(finished_run)
    result = riskpo_train(f"trainer.total_steps={total_steps}", "resume=auto",
                          f"run_dir={finished_run}", timeout=120)
    assert result.returncode == 0
    line = last_line(result)
    assert "nothing to train" in line and "step 4" in line
    assert f"trainer.total_steps={total_steps}" in line
    assert RAY_STARTED not in result.stderr
    assert snapshot(finished_run) == before


def test_overwrite_replaces_the_run_and_a_resume_continues_the_new_one(finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path)
    result = riskpo_train("trainer.total_steps=2", "run_dir_policy=overwrite", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["step"] for row in read_metrics(run_dir)] == [1, 2]
    assert [p.name for p in complete_checkpoints(run_dir)] == ["step_000002"]  # none of the old run
    kinds = [event["kind"] for event in read_jsonl(run_dir / "events.jsonl")]
    assert kinds[0] == "run_dir" and kinds.count("startup") == 1  # the old run's events went too
    result = riskpo_train("trainer.total_steps=3", "resume=auto", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["step"] for row in read_metrics(run_dir)] == [1, 2, 3]  # the new run continued
    assert [r["step"] for r in read_jsonl(run_dir / "prompts.jsonl")] == [1, 2, 3]


def test_policy_new_writes_beside_the_run_and_leaves_it_alone(finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path)
    before = snapshot(run_dir)
    ray_tmpdir = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))  # a shared Ray temp dir
    try:
        result = riskpo_train("trainer.total_steps=1", "run_dir_policy=new", f"run_dir={run_dir}",
                              "trainer.prompts_per_step=7", "algorithm.options.drop_last_bundle=true",
                              env={"RAY_TMPDIR": str(ray_tmpdir)})
        assert result.returncode == 0, result.stderr[-3000:]
        assert not list(ray_tmpdir.glob("session_*"))  # this run's session went, not the dir
    finally:
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    assert snapshot(run_dir) == before
    assert f"this run writes to {run_dir}-2" in result.stderr.replace("\n", " ")
    assert [row["step"] for row in read_metrics(tmp_path / "R-2")] == [1]
    # said once at start-up: what a step really uses
    assert result.stderr.count("each step: 5 prompts in bundles of 5; algorithm.options.drop_last_bundle "
                               "drops 2 of the trainer.prompts_per_step=7 prompts every step") == 1
    assert [len(r["rows"]) for r in read_jsonl(tmp_path / "R-2" / "prompts.jsonl")] == [5]


def test_a_resume_may_change_length_cadence_and_logging_and_continues_the_records(
        finished_run, tmp_path):
    run_dir = copy_of(finished_run, tmp_path)
    metrics_before = (run_dir / "metrics.jsonl").read_text().splitlines()
    prompts_before = (run_dir / "prompts.jsonl").read_text().splitlines()
    wall_s_at_4 = checkpoint_meta(run_dir / "checkpoints" / "step_000004")["wall_s"]
    result = riskpo_train("trainer.total_steps=6", "trainer.save_every=2", "trainer.eval_every=3",
                          "logger.progress=plain", "resume=auto", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert (run_dir / "metrics.jsonl").read_text().splitlines()[:4] == metrics_before
    assert "eval/avg@2" in rows[5]  # the last step evaluates
    prompts = read_jsonl(run_dir / "prompts.jsonl")
    assert (run_dir / "prompts.jsonl").read_text().splitlines()[:4] == prompts_before
    assert [r["step"] for r in prompts] == [1, 2, 3, 4, 5, 6]
    used = [row for record in prompts for row in record["rows"]]
    assert len(used) == 30 == len(set(used))  # no prompt replayed after the resume
    config = OmegaConf.load(run_dir / "config.yaml")
    assert config.trainer.total_steps == 6 and config.trainer.eval_every == 3
    messages = [e["message"] for e in read_jsonl(run_dir / "events.jsonl") if e["kind"] == "run_dir"]
    assert "changed on resume: trainer.total_steps: 4 -> 6" in messages
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6
    # the whole run: the time up to the checkpoint of step 4 and the two steps after it
    assert summary["wall_s"] > wall_s_at_4 + rows[4]["time/step"] + rows[5]["time/step"]


# ----------------------------------------------------------------------------- output paths


def _read_only_mount(path: Path) -> None:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(path)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("mounting a read-only tmpfs needs root; the other path cases still run")


@pytest.mark.parametrize("case", ["checkpoints_is_a_file", "plots_is_a_file", "wandb_is_a_file",
                                  "under_a_file", "read_only", "parent_cannot_be_made",
                                  "name_too_long"])
def test_an_output_path_that_cannot_be_written_stops_before_any_actor(tmp_path, case):
    """Also a run_dir that cannot be made at all: permission bits allow it (as they do /proc
    for root) but mkdir fails, or a name the filesystem refuses; Hydra would make the
    directory first and end in a traceback."""
    run_dir, overrides, named = tmp_path / "run", [], None
    if case == "parent_cannot_be_made":
        run_dir = named = Path("/proc") / f"riskpo-{tmp_path.name}" / "run"
    elif case == "name_too_long":
        run_dir = named = tmp_path / ("x" * 300) / "run"
    elif case == "under_a_file":
        (tmp_path / "file").write_text("")
        run_dir = named = tmp_path / "file" / "run"
    elif case == "read_only":
        _read_only_mount(tmp_path / "ro")
        run_dir = named = tmp_path / "ro" / "run"
    else:
        name = case.removesuffix("_is_a_file")
        run_dir.mkdir()
        (run_dir / name).write_text("")
        named = run_dir / name
        overrides = {"plots": ["logger.plots=true"], "wandb": ["logger.backend=wandb"]}.get(name, [])
    try:
        result = riskpo_train(*overrides, f"run_dir={run_dir}", timeout=120)
    finally:
        if case == "read_only":
            subprocess.run(["umount", "-l", str(tmp_path / "ro")], check=False)
    assert result.returncode == 2
    line = last_line(result)
    assert line.startswith("config error: run_dir:") and str(named) in line
    assert RAY_STARTED not in result.stderr


# ----------------------------------------------------------------------------- the cluster


@pytest.mark.parametrize("where", ["RAY_ADDRESS", "cluster.address"])
def test_an_unreachable_cluster_stops_in_seconds_naming_the_address(tmp_path, where):
    if where == "RAY_ADDRESS":  # the command, with the default timeout (15 s)
        args, env = ["trainer.total_steps=2"], {"RAY_ADDRESS": "127.0.0.1:1"}
    else:
        args, env = ["cluster.address=127.0.0.1:1", "cluster.connect_timeout_s=2"], {}
    started = time.monotonic()
    result = riskpo_train(*args, f"run_dir={tmp_path / 'run'}", env=env, timeout=120)
    assert time.monotonic() - started < 90
    assert result.returncode == 2
    line = last_line(result)
    assert line.startswith(f"config error: {where}: no Ray cluster answered at 127.0.0.1:1")
    assert "ray status" in line and "connect_timeout_s" in line
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_riskpo_submit_to_a_dead_address_is_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "launch.submit", "--address", "http://127.0.0.1:1",
         "--connect-timeout", "2", "trainer.total_steps=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("riskpo-submit: cannot reach the Ray dashboard at "
                                    "http://127.0.0.1:1")


# ----------------------------------------------------------------------------- a full disk


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:  # tests/riskpo/run/test_stops.py pins the same by injection
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")


def test_a_disk_without_room_for_the_next_checkpoint_stops_cleanly(tmp_path):
    """A 40 MiB filesystem holds a few checkpoints of the tiny model (each ~12-16 MiB, with the
    learner's optimizer state), not six: the run stops at the first that does not fit, naming the
    last complete one, with every earlier checkpoint complete and nothing partial."""
    disk = tmp_path / "disk"
    _tmpfs(disk, "40m")
    run_dir = disk / "run"
    try:
        result = riskpo_train("trainer.total_steps=6", "trainer.save_every=1",
                              "trainer.keep_checkpoints=0", f"run_dir={run_dir}")
        assert result.returncode == 1, result.stderr[-3000:]
        line = last_line(result)
        assert line.startswith(f"stopped: no space left on {run_dir / 'checkpoints'}")
        names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        assert 1 <= len(names) < 6
        assert names == [f"step_{step:06d}" for step in range(1, len(names) + 1)]  # nothing partial
        assert line.endswith(f"last complete checkpoint: {run_dir / 'checkpoints' / names[-1]}")
        assert [p.name for p in complete_checkpoints(run_dir)] == names
        assert [e["kind"] for e in read_jsonl(run_dir / "events.jsonl")][-1] == "stopped"
        assert not (run_dir / "summary.json").exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_disk_without_room_for_one_checkpoint_is_refused_before_any_actor(tmp_path):
    disk = tmp_path / "disk"
    _tmpfs(disk, "8m")
    try:
        result = riskpo_train("trainer.total_steps=2", f"run_dir={disk / 'run'}", timeout=120)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert result.returncode == 2
    line = last_line(result)
    assert line.startswith(f"config error: run_dir: no space left on {disk / 'run' / 'checkpoints'}")
    assert RAY_STARTED not in result.stderr


def test_running_out_of_space_inside_a_save_keeps_the_last_complete_checkpoint(
        ray_cluster, tmp_path, monkeypatch):
    """The write itself hits ENOSPC (the check before writing is switched off): the learner's
    real error from its Ray actor is recognised, the partial checkpoint removed."""
    from rich.console import Console

    from launch.config import compose_config, validate
    from launch.train import train
    from riskpo.run import checkpoints
    from riskpo.run.stops import NoSpaceLeft

    disk = tmp_path / "disk"
    _tmpfs(disk, "24m")
    run_dir = disk / "run"
    monkeypatch.setattr(checkpoints, "space_problem", lambda path, needed: None)
    cfg = compose_config([*FAST, "trainer.total_steps=4", "trainer.save_every=1",
                          f"run_dir={run_dir}"])
    try:
        with pytest.raises(NoSpaceLeft) as stop:
            train(validate(cfg), OmegaConf.to_container(cfg, resolve=True), run_dir,
                  console=Console(stderr=True, quiet=True))
        message = str(stop.value)
        assert message.startswith(f"no space left on {run_dir / 'checkpoints'} while saving step 2")
        assert "removed the partial step_000002" in message
        assert message.endswith(str(run_dir / "checkpoints" / "step_000001"))
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000001"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# ----------------------------------------------------------------------------- interrupts


@pytest.mark.parametrize(("signal_number", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_says_what_was_kept_and_resume_continues(tmp_path, signal_number, status):
    run_dir = tmp_path / "run"
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    environment = {k: v for k, v in os.environ.items() if k != "RAY_TMPDIR"}
    environment["TMPDIR"] = str(temp)
    process = subprocess.Popen(
        [sys.executable, "-m", "launch.train", *FAST, "trainer.total_steps=500",
         "trainer.save_every=2", f"run_dir={run_dir}"],
        cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's job has
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "step_000004" / "COMPLETE").exists():
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.2)
        if signal_number == signal.SIGINT:  # Ctrl-C reaches the whole foreground group
            os.killpg(process.pid, signal_number)
        else:
            process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=120)
        assert not [p.name for p in temp.iterdir() if p.name.startswith("ray")]
    finally:
        if process.poll() is None:
            process.kill()
        shutil.rmtree(temp, ignore_errors=True)
    assert process.returncode == status
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    kept = complete_checkpoints(run_dir)[-1]
    step = int(line.split("interrupted at step ")[1].split(";")[0])
    assert line == (f"interrupted at step {step}; last complete checkpoint: {kept}; "
                    f"continue with resume=auto run_dir={run_dir}")
    assert all((p / "COMPLETE").exists() for p in (run_dir / "checkpoints").iterdir())
    assert read_jsonl(run_dir / "events.jsonl")[-1]["kind"] == "interrupted"
    if signal_number == signal.SIGTERM:
        return
    done = checkpoint_meta(kept)["step"]
    result = riskpo_train(f"trainer.total_steps={done + 2}", "resume=auto", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["step"] for row in read_metrics(run_dir)] == list(range(1, done + 3))


# ----------------------------------------------------------------------------- divergence


def test_a_diverging_run_stops_naming_the_step_the_metric_and_the_last_good_checkpoint(tmp_path):
    """The issue's command on the warm-started default: learner.lr=1e3 collapses the policy,
    then DeepSpeed skips every update (non-finite gradients)."""
    run_dir = tmp_path / "run"
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    environment = {k: v for k, v in os.environ.items() if k != "RAY_TMPDIR"}
    environment["TMPDIR"] = str(temp)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "launch.train", "trainer.total_steps=20", "learner.lr=1e3",
             "trainer.save_every=3", "logger.backend=none", "logger.plots=false",
             "logger.progress=none", f"run_dir={run_dir}"],
            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=1200, check=False)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert result.returncode == 1, result.stderr[-3000:]
    line = last_line(result)
    assert line.startswith("stopped: training stopped at step "), line
    events = read_jsonl(run_dir / "events.jsonl")
    stop, first = events[-1], [e for e in events if e["kind"] == "train/non_finite"][0]
    assert stop["kind"] == "stopped" and stop["step"] >= first["step"]
    assert line.startswith(f"stopped: training stopped at step {stop['step']}: ")
    assert "not finite" in line and ("actor/grad_norm" in line or "actor/loss" in line)
    good = complete_checkpoints(run_dir)
    # no checkpoint of the weights that went non-finite (trained up to the step before)
    assert all(checkpoint_meta(p)["step"] < first["step"] - 1 for p in good)
    assert line.endswith(f"last good checkpoint: {good[-1]}" if good else "no checkpoint was completed)")
    rows = read_metrics(run_dir)
    assert rows[-1]["step"] == stop["step"] and rows[-1]["actor/skipped_updates"] >= 1
    assert not (run_dir / "summary.json").exists()
