"""launch/cluster scripts: the `ray start` command each node role gets (a stand-in `ray` on PATH
prints its arguments), and flag errors that name the flag."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here starts a process

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_ray_path(tmp_path: Path) -> str:
    fake = tmp_path / "bin" / "ray"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    return f"{fake.parent}:{os.environ['PATH']}"


def _run(script: str, args: list[str], path: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=path, RAY_PORT="7000", DASHBOARD_PORT="7001")
    return subprocess.run(["bash", str(REPO / "launch/cluster" / script), *args], env=env,
                          capture_output=True, text=True, timeout=30)


def test_head_with_gpus_and_verifier_slots(fake_ray_path: str) -> None:
    result = _run("start_head.sh", ["--num-gpus", "2", "--num-cpus", "8", "--verifier-slots", "4",
                                    "--", "--block"], fake_ray_path)
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()
    assert args[:2] == ["start", "--head"]
    for expected in ("--port=7000", "--dashboard-port=7001", "--dashboard-host=0.0.0.0",
                     "--num-gpus=2", "--num-cpus=8", "--block", "--disable-usage-stats"):
        assert expected in args, expected
    (resources,) = [a.removeprefix("--resources=") for a in args if a.startswith("--resources=")]
    assert json.loads(resources) == {"verifier_node": 4}


def test_gpu_worker_has_no_verifier_resource(fake_ray_path: str) -> None:
    result = _run("start_worker.sh", ["10.0.0.1:6379", "--num-gpus", "8", "--num-cpus", "64"],
                  fake_ray_path)
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()
    assert args[:2] == ["start", "--address=10.0.0.1:6379"]
    assert "--num-gpus=8" in args and not any(a.startswith("--resources") for a in args)


def test_verifier_worker(fake_ray_path: str) -> None:
    result = _run("start_worker.sh", ["10.0.0.1:6379", "--num-gpus", "0", "--verifier-slots", "16"],
                  fake_ray_path)
    assert result.returncode == 0, result.stderr
    assert '--resources={"verifier_node": 16}' in result.stdout.splitlines()
    assert "--num-gpus=0" in result.stdout.splitlines()


@pytest.mark.parametrize(("args", "message"), [
    (["--num-gpus", "two"], "--num-gpus must be a non-negative integer, got 'two'"),
    (["--verifier-slots", "-1"], "--verifier-slots must be a non-negative integer"),
    (["--block"], "unknown flag '--block' (ray start flags go after --)"),
])
def test_bad_flags_are_named(fake_ray_path: str, args: list[str], message: str) -> None:
    result = _run("start_head.sh", args, fake_ray_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""  # ray was never called


def test_worker_needs_the_head_address(fake_ray_path: str) -> None:
    result = _run("start_worker.sh", [], fake_ray_path)
    assert result.returncode != 0 and "usage: start_worker.sh HEAD_IP:PORT" in result.stderr


def test_driver_slots_join_the_custom_resources(fake_ray_path: str) -> None:
    result = _run("start_head.sh", ["--num-gpus", "0", "--verifier-slots", "2",
                                    "--driver-slots", "1"], fake_ray_path)
    assert result.returncode == 0, result.stderr
    (resources,) = [a.removeprefix("--resources=") for a in result.stdout.splitlines()
                    if a.startswith("--resources=")]
    assert json.loads(resources) == {"verifier_node": 2, "riskpo_driver": 1}
