"""verifier.sandbox: `auto` runs code with the strongest isolation the machine has and says
which layers are missing; `strict` refuses to start a code actor without all of them. The run
config, the Ray actor and the command line all honour it."""

from __future__ import annotations

import pytest

from workers.verifier import sandbox
from workers.verifier.__main__ import parse_args
from workers.verifier.config import VerifierConfig
from workers.verifier.executor import SandboxUnavailable
from workers.verifier.ray_pool import VerifierActor


@pytest.fixture
def no_landlock(monkeypatch):
    """A machine whose kernel has no Landlock: one layer missing."""
    monkeypatch.setattr(sandbox, "landlock_abi", lambda: 0)


@pytest.mark.slow
def test_strict_refuses_a_code_actor_on_a_machine_missing_a_layer(no_landlock):
    with pytest.raises(SandboxUnavailable, match="landlock"):
        VerifierActor("code", VerifierConfig(sandbox="strict").limits())


@pytest.mark.slow
def test_auto_starts_degraded_and_says_which_layer_is_missing(no_landlock):
    actor = VerifierActor("code", VerifierConfig(sandbox="auto").limits())
    try:
        assert "landlock" in actor.verifier.executor.layers["degraded"]
    finally:
        actor.verifier.executor.close()


def test_the_command_line_takes_the_mode():
    assert parse_args(["code", "--input", "a", "--output", "b"]).sandbox == "auto"
    assert parse_args(["code", "--input", "a", "--output", "b", "--sandbox", "strict"]).sandbox == "strict"
