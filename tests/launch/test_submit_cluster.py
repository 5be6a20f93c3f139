"""riskpo-submit against a real Ray head started here (launch/cluster/start_head.sh): the embedded
default with a few steps runs as a Ray job and leaves the run directory's contract outputs."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The embedded default, shortened: no warm start (minutes of CPU), three RL steps, no wandb.
FAST_OVERRIDES = ["trainer.total_steps=3", "model.warmstart.enabled=false", "logger=none"]

pytestmark = pytest.mark.slow
# A stand-in for launch/train.py: checks what the job's working directory holds, writes a run
# directory shaped like the real one, and fails when asked to (to check exit statuses).
STAND_IN_DRIVER = """
import json, pathlib, sys
overrides = {k: v.strip("'") for k, v in (a.lstrip("+").split("=", 1) for a in sys.argv[1:])}
shipped = pathlib.Path.cwd()
assert (shipped / "conf").is_dir(), "conf/ was not shipped"
for excluded in (".git", "data", "checkpoints", ".venv"):
    assert not (shipped / excluded).exists(), f"{excluded} was shipped"
print("stand-in driver running with", overrides, flush=True)
run_dir = pathlib.Path(overrides["run_dir"])
run_dir.mkdir(parents=True)
(run_dir / "config.yaml").write_text(f"seed: {overrides['seed']}\\nrun_dir: {run_dir}\\n")
if overrides["seed"] == overrides.get("fail_on_seed"):
    sys.exit("stand-in driver failing on purpose")
summary = {"initial": {"eval/avg@8": 0.1}, "final": {"eval/avg@8": 0.5}, "steps": 3, "wall_s": 1}
(run_dir / "summary.json").write_text(json.dumps(summary))
"""


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


WAIT_FOR_JOB_API = """
import sys, time
from ray.job_submission import JobSubmissionClient
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        JobSubmissionClient(sys.argv[1]).list_jobs()
        break
    except Exception as error:  # not up yet: connection refused, 503, ...
        if time.monotonic() > deadline:
            sys.exit(f"no Ray job API at {sys.argv[1]}: {error}")
        time.sleep(1.0)
"""


def _wait_for_job_api(address: str, env: dict[str, str], timeout_s: float = 120.0) -> None:
    # In a child process: Ray's client reads its authentication mode once per process.
    result = subprocess.run([sys.executable, "-c", WAIT_FOR_JOB_API, address, str(timeout_s)],
                            env=env, capture_output=True, text=True, timeout=timeout_s + 30)
    assert result.returncode == 0, result.stderr[-2000:]


def _kill_session_processes(temp_dir: str) -> None:
    """Kill, by pid, what is left of this head: processes whose command line names its temp dir."""
    import psutil

    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(temp_dir in part for part in process.info["cmdline"] or ()):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


@dataclass(frozen=True)
class RayHead:
    address: str  # the job API
    client_env: dict[str, str]  # environment for clients: token authentication on, its token


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """A Ray head on free ports, started by the cluster script, with token authentication (Ray's
    default) and a token of its own, so that nothing depends on ~/.ray/auth_token."""
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's unix sockets live here
    gcs, dashboard, agent_http, agent_grpc, metrics, env_agent, client, node_manager, objects = (
        _free_ports(9))
    env = dict(os.environ, RAY_PORT=str(gcs), DASHBOARD_PORT=str(dashboard), RAY_TMPDIR=temp_dir,
               RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    command = ["bash", str(REPO / "launch/cluster/start_head.sh"),
               "--num-cpus", "4", "--num-gpus", "0", "--verifier-slots", "1", "--",
               f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={agent_http}",
               f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
               f"--runtime-env-agent-port={env_agent}", f"--ray-client-server-port={client}",
               f"--node-manager-port={node_manager}", f"--object-manager-port={objects}",
               "--block"]
    head = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        if head.poll() is not None:
            pytest.fail(f"the Ray head exited with {head.returncode}")
        _wait_for_job_api(address, env)
        yield RayHead(address, env)
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        _kill_session_processes(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stand_in_checkout(root: Path) -> Path:
    """A checkout whose launch/train.py is the stand-in, with things that must not be shipped."""
    for name in ("pyproject.toml", "conf", "launch/__init__.py"):
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, target)
        else:
            shutil.copy2(REPO / name, target)
    (root / "launch" / "train.py").write_text(STAND_IN_DRIVER)
    for excluded in (".git/objects", "data/gsm8k", "checkpoints/step_3", ".venv/bin"):
        (root / excluded).mkdir(parents=True)
        (root / excluded / "payload").write_bytes(b"x" * 1024)
    return root


def test_a_sweep_becomes_one_job_per_run_with_statuses_and_summary(
    ray_head: RayHead, tmp_path: Path
) -> None:
    checkout = _stand_in_checkout(tmp_path / "checkout")
    runs_root = tmp_path / "runs"
    command = [str(BIN / "riskpo-submit"), "--address", ray_head.address,
               "--runs-root", str(runs_root), "--working-dir", str(checkout),
               "--python", sys.executable, "-m", "seed=0,1", "+fail_on_seed=1"]
    result = subprocess.run(command, cwd=tmp_path, env=ray_head.client_env, capture_output=True,
                            text=True, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]  # one of the two jobs failed
    assert output.count("submitted riskpo-seed-") == 2
    assert "stand-in driver running with" in output  # the logs were followed
    assert "SUCCEEDED" in output and "FAILED" in output
    run_dirs = sorted(path.name for path in runs_root.iterdir() if path.is_dir())
    assert len(run_dirs) == 2 and all(name.startswith("riskpo-seed-") for name in run_dirs)
    table = (runs_root / "sweep_summary.md").read_text()
    assert "| 0 | 0.5 | 3 |" in table and "| 1 | — | no summary.json |" in table


def test_submit_the_embedded_default_and_read_its_run_dir(
    ray_head: RayHead, tmp_path: Path
) -> None:
    from riskpo.run.checkpoints import complete_checkpoints
    from riskpo.run.record import CONFIG_FILE, REQUIRED_STEP_KEYS

    runs_root = tmp_path / "runs"
    runs_root.mkdir()
    command = [str(BIN / "riskpo-submit"), "--address", ray_head.address,
               "--runs-root", str(runs_root), "--python", sys.executable,
               "--env", f"RISKPO_CACHE={tmp_path / 'cache'}", "--", *FAST_OVERRIDES]
    result = subprocess.run(command, cwd=REPO, env=ray_head.client_env, capture_output=True,
                            text=True, timeout=420)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "submitted riskpo-" in output and "ray job logs --address" in output
    assert "SUCCEEDED" in output

    (run_dir,) = [path for path in runs_root.iterdir() if path.is_dir()]
    assert (run_dir / CONFIG_FILE).is_file()  # the resolved config
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [m for m in metrics if "train/reward_mean" in m]
    assert [m["step"] for m in train_steps][-1] == 3
    for key in REQUIRED_STEP_KEYS:
        assert key in train_steps[-1], key
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["wall_s"] > 0
    assert summary["initial"] and summary["final"]
    assert list(run_dir.rglob("*.png")), "no plots in the run directory"
    assert complete_checkpoints(run_dir), "no finished checkpoint (the last step saves one)"
    assert (runs_root / "sweep_summary.md").is_file()
