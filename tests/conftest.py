"""Shared pytest fixtures: one local Ray cluster per session (starting one per test costs ~3 s each)."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster with 8 logical CPUs (more than the 2 physical cores is fine for tests)."""
    import ray

    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=256 * 1024 * 1024,
        _temp_dir=os.environ["RAY_TMPDIR"],
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def throwaway_files():
    """write(path, text): puts a file into the source tree for one test (a throwaway module in a
    discovered package, its yaml in conf/), refusing to overwrite one; every file written, and
    the bytecode Python caches for a module, is removed afterwards, also when the test fails.
    The proof that a new estimator or task is one module plus one yaml."""
    import pathlib

    written: list[pathlib.Path] = []

    def write(path: pathlib.Path, text: str) -> pathlib.Path:
        if path.exists():
            raise FileExistsError(f"{path} exists: a throwaway file never replaces one")
        written.append(path)
        path.write_text(text)
        return path

    yield write
    for path in written:
        path.unlink(missing_ok=True)
        for cached in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
            cached.unlink(missing_ok=True)
