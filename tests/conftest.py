"""Shared pytest fixtures (one local Ray cluster per session: starting one per test costs ~3 s
each), and the rule of the two test lanes: a test is `slow` when it starts a process or trains a
model; the fast lane (`make test-fast`) runs the others, in-process. A test that uses a fixture
starting processes (PROCESS_FIXTURES) is marked slow here; the others carry the marker."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# fixtures that start processes: the Ray cluster, the verifiers' worker processes and sandbox
PROCESS_FIXTURES = frozenset({"ray_cluster", "code_executor", "code_verifier", "patient_code_verifier",
                              "math_verifier", "patient_math_verifier"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks slow every test that uses a fixture of PROCESS_FIXTURES."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
