"""The rollout actor and group: least-loaded scheduling, prompt order, placement groups,
and surviving an actor's death (restart + one resubmission, reported)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from rollout_test_support import ENGINE_KWARGS, VLLM_AVAILABLE

from riskpo.messages import NonFiniteSampling, Prompt, SamplingParams
from workers.rollout import make_engine
from workers.rollout.hf_engine import HFEngine

PROMPTS = [Prompt(text=f"{a}+{a * 7 % 10}=") for a in range(10)] + [
    Prompt(messages=[{"role": "user", "content": "2*3="}])
]
GREEDY = SamplingParams(n=2, temperature=0.0, max_new_tokens=6)


class CrashingEngine(HFEngine):
    """Kills its process on generate: once in all (the first caller to claim the marker
    file), or always."""

    def __init__(self, model_path, *, marker: str, always: bool = False, **kwargs):
        super().__init__(model_path, **kwargs)
        self.marker, self.always = marker, always

    def generate(self, prompts, params):
        if self.always or _claim(self.marker):
            os._exit(1)
        return super().generate(prompts, params)


class GatedEngine(HFEngine):
    """Loads only once a file exists (the test opens the gate); raises if told to."""

    def __init__(self, model_path, *, gate: str, fail: bool = False, **kwargs):
        import time

        while not os.path.exists(gate):
            time.sleep(0.05)
        if fail:
            raise RuntimeError("the engine could not load")
        super().__init__(model_path, **kwargs)


def _claim(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


# ---- scheduling (no Ray) --------------------------------------------------------------


def test_scheduler_picks_least_outstanding_work_within_the_inflight_cap():
    from workers.rollout.group import LeastLoadedScheduler

    scheduler = LeastLoadedScheduler(num_actors=3, max_inflight_per_actor=2)
    scheduler.start(0, 100)
    scheduler.start(1, 10)
    assert scheduler.pick() == 2
    scheduler.start(2, 50)
    assert scheduler.pick() == 1
    scheduler.start(1, 10)  # actor 1 is now full
    assert scheduler.pick() == 2
    scheduler.finish(0, 100)
    assert scheduler.pick() == 0
    assert scheduler.pick(avoid=0) == 2


def test_scheduler_waits_rather_than_reuse_a_failed_actor_unless_it_is_alone():
    from workers.rollout.group import LeastLoadedScheduler

    pair = LeastLoadedScheduler(num_actors=2, max_inflight_per_actor=1)
    pair.start(1, 5)
    assert pair.pick(avoid=0) is None
    single = LeastLoadedScheduler(num_actors=1, max_inflight_per_actor=1)
    assert single.pick(avoid=0) == 0


def test_chunks_carry_estimated_work():
    from workers.rollout.group import make_chunks

    chunks = make_chunks(PROMPTS[:5], SamplingParams(n=2, max_new_tokens=6), chunk_size=2)
    assert [c.prompt_indices for c in chunks] == [[0, 1], [2, 3], [4]]
    assert chunks[0].work == 2 * (4 + 6) * 2


def test_actor_weight_sync_entry_points_feed_the_engine(tiny_model_path, other_tiny_model_path):
    from riskpo.models.loading import load_model_and_tokenizer
    from workers.rollout.actor import RolloutActor
    from workers.weight_sync import WeightManifest

    actor = RolloutActor("hf", tiny_model_path, ENGINE_KWARGS["hf"])
    weights = load_model_and_tokenizer(other_tiny_model_path)[0].state_dict()
    manifest = WeightManifest([], version=1)

    class FakeReceiver:
        def receive(self, received):
            assert received is manifest
            return iter(weights.items())

    with pytest.raises(RuntimeError, match="join_weight_sync"):
        actor.receive_weights(manifest, 4)
    actor._receiver = FakeReceiver()
    assert actor.receive_weights(manifest, 4) == 4  # the learner's number for them
    assert actor.ping()["weight_version"] == 4 == actor.weight_version()
    completions = actor.generate(PROMPTS[:1], GREEDY)
    assert {c.weight_version for c in completions[0]} == {4}
    actor.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        actor.receive_weights(manifest, 5)
    assert actor.weight_version() == 4  # weights the engine refused are not held


class NonFiniteEngine(HFEngine):
    def generate(self, prompts, params):
        raise NonFiniteSampling("HFEngine: probability tensor contains either `inf`, `nan` or element < 0")


def test_the_actor_stamps_non_finite_sampling_with_the_weights_that_sampled(tiny_model_path):
    import pickle

    from workers.rollout.actor import RolloutActor

    actor = RolloutActor(NonFiniteEngine, tiny_model_path, ENGINE_KWARGS["hf"])
    actor._weight_version = 6  # as a sync of version 6 leaves it
    with pytest.raises(NonFiniteSampling) as error:
        actor.generate(PROMPTS[:1], GREEDY)
    assert error.value.weight_version == 6
    assert pickle.loads(pickle.dumps(error.value)).weight_version == 6  # what crosses Ray


# ---- Ray ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def expected_greedy(tiny_model_path):
    engine = make_engine("hf", tiny_model_path, **ENGINE_KWARGS["hf"])
    return [[s.token_ids for s in samples] for samples in engine.generate(PROMPTS, GREEDY)]


@pytest.fixture(scope="module")
def crash_engine_by_value():
    """Ray workers cannot import this test module: ship CrashingEngine by value."""
    import ray.cloudpickle

    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)
    yield
    ray.cloudpickle.unregister_pickle_by_value(module)


@pytest.mark.slow
def test_group_survives_an_actor_death_and_keeps_prompt_order(
    ray_cluster, tiny_model_path, expected_greedy, crash_engine_by_value, tmp_path: Path
):
    from ray.util.placement_group import placement_group, remove_placement_group

    from workers.rollout.group import RolloutGroup

    bundles = placement_group([{"CPU": 1}, {"CPU": 1}])
    ray_cluster.get(bundles.ready())
    kwargs = {**ENGINE_KWARGS["hf"], "marker": str(tmp_path / "crashed")}
    group = RolloutGroup(
        2, CrashingEngine, tiny_model_path, kwargs, placement_group=bundles, max_restarts=1
    )
    try:
        results = group.generate(PROMPTS, GREEDY)  # one actor dies under its first chunk
        assert [[s.token_ids for s in samples] for samples in results] == expected_greedy
        assert len(group.events) >= 1
        assert {event.kind for event in group.events} == {"actor_died"}
        assert group.metrics()["rollout/actor_failures"] == len(group.events)
        assert group.weight_versions() == [None, None]  # the dead actor is back, unsynced

        results = group.generate(PROMPTS, GREEDY)  # and both serve the next batch
        assert [[s.token_ids for s in samples] for samples in results] == expected_greedy
        assert group.metrics()["rollout/actor_failures"] == 0
        assert group.metrics()["rollout/response_tokens"] > 0
        pids = {ray_cluster.get(actor.ping.remote())["pid"] for actor in group.actors}
        assert len(pids) == 2
    finally:
        group.shutdown()
        remove_placement_group(bundles)


@pytest.mark.slow
@pytest.mark.parametrize("fail", [False, True])
def test_a_group_started_without_waiting_is_ready_when_its_engines_are(
    ray_cluster, tiny_model_path, expected_greedy, crash_engine_by_value, tmp_path: Path, fail
):
    """wait=False returns while the engines load (launch/factory.py loads the learner
    meanwhile); wait_ready() returns once they have, or raises what an engine's start raised."""
    from workers.rollout.group import RolloutGroup

    gate = tmp_path / "gate"
    kwargs = {**ENGINE_KWARGS["hf"], "gate": str(gate), "fail": fail}
    group = RolloutGroup(1, GatedEngine, tiny_model_path, kwargs, max_restarts=0, wait=False)
    try:
        gate.touch()  # the constructor returned with the engine still held at its gate
        if fail:
            with pytest.raises(Exception, match="the engine could not load"):
                group.wait_ready()
            return
        group.wait_ready()
        results = group.generate(PROMPTS, GREEDY)
        assert [[s.token_ids for s in samples] for samples in results] == expected_greedy
    finally:
        group.shutdown()


@pytest.mark.slow
def test_group_raises_when_a_chunk_fails_twice(
    ray_cluster, tiny_model_path, crash_engine_by_value, tmp_path: Path
):
    from workers.rollout.group import RolloutGroup, RolloutLostError

    kwargs = {**ENGINE_KWARGS["hf"], "marker": str(tmp_path / "unused"), "always": True}
    group = RolloutGroup(2, CrashingEngine, tiny_model_path, kwargs, max_restarts=1)
    try:
        with pytest.raises(RolloutLostError, match="failed on actor"):
            group.generate(PROMPTS[:2], GREEDY, chunk_size=1)
        assert len(group.events) >= 2
    finally:
        group.shutdown()


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_AVAILABLE, reason="vllm is not importable here (.venv-vllm has it)")
def test_vllm_engine_serves_from_inside_a_rollout_actor(
    ray_cluster, tiny_model_path, expected_greedy
):
    from workers.rollout.group import RolloutGroup

    group = RolloutGroup(1, "vllm", tiny_model_path, ENGINE_KWARGS["vllm"])
    try:
        results = group.generate(PROMPTS, GREEDY)
        assert [[s.token_ids for s in samples] for samples in results] == expected_greedy
        assert group.weight_versions() == [None]
    finally:
        group.shutdown()
