"""The rollout pipeline alone: batches come in step order, each made by the weights it is due
from (k versions old, whatever the timing), a weight sync never lands inside a generation, and
drained batches restore exactly."""

from __future__ import annotations

import random
import time

import pytest

from riskpo.loop.pipeline import RolloutPipeline


class Engines:
    """A fake engine set: generation takes a while and records the weight version it used;
    a sync while a generation runs would be a mixed-version generation."""

    def __init__(self, jitter: float = 0.0) -> None:
        self.version, self.generating, self.mixed, self.log = 0, False, False, []
        self.rng, self.jitter = random.Random(0), jitter

    def generate(self, step: int) -> tuple[int, int]:
        self.generating = True
        start = self.version
        time.sleep(self.rng.random() * self.jitter)
        self.mixed |= self.version != start
        self.generating = False
        self.log.append(("generate", step, start))
        return step, start

    def sync(self, version: int) -> None:
        self.mixed |= self.generating
        self.version = version


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("training_s", [0.0, 0.03])
def test_each_batch_is_made_by_the_version_it_is_due_from_whatever_the_timing(depth, training_s):
    engines = Engines(jitter=0.02)
    pipeline = RolloutPipeline(engines.generate, depth, last_step=9, held_version=lambda: engines.version)
    versions = []
    try:
        for step in range(1, 10):
            made_for, version = pipeline.take(step)
            assert made_for == step
            versions.append(version)
            time.sleep(training_s)  # the learner trains: version step
            pipeline.sync(step, lambda s=step: engines.sync(s))
    finally:
        pipeline.close()
    assert versions == [max(0, step - 1 - depth) for step in range(1, 10)]
    assert not engines.mixed
    assert [e[1] for e in engines.log] == list(range(1, 10))  # nothing made past the last step


def test_drained_batches_restore_in_order():
    engines = Engines()
    first = RolloutPipeline(engines.generate, 2, last_step=10, held_version=lambda: engines.version)
    first.take(1)
    saved, generated = first.drain(), first.generated
    first.close()
    assert [step for step, _ in saved] == [2, 3] and generated == 3
    engines.sync(1)  # a resume gives the engines the restored weights
    resumed = RolloutPipeline(lambda step: pytest.fail(f"regenerated step {step}"), 2, last_step=10,
                              held_version=lambda: engines.version)
    resumed.restore(saved, generated)
    assert resumed.take(2) == saved[0][1]
    resumed._produce = engines.generate  # the next batches are new
    assert resumed.take(3) == saved[1][1]
    resumed.close()


def test_close_releases_a_generation_waiting_for_its_weights():
    engines = Engines()
    pipeline = RolloutPipeline(engines.generate, 1, last_step=5, held_version=lambda: engines.version)
    pipeline.take(1)
    pipeline.take(2)  # step 3 waits for version 1, which never comes
    begin = time.perf_counter()
    pipeline.close()
    assert time.perf_counter() - begin < 5


@pytest.mark.parametrize("asked_at", [1, 4])  # while the loop waits in take (1) or in sync
def test_a_sync_the_generation_asks_for_runs_on_the_loops_thread(asked_at):
    import threading

    engines, loop_thread, ran_on = Engines(), threading.get_ident(), []
    pipeline: RolloutPipeline = None  # type: ignore[assignment]

    def produce(step):
        if step == asked_at:  # an engine restarted: the loop must sync its current weights
            def resync():
                ran_on.append(threading.get_ident())
                engines.sync(learner_version)
                return learner_version
            assert pipeline.request_sync(resync) == learner_version
        return engines.generate(step)

    pipeline = RolloutPipeline(produce, 1, last_step=6, held_version=lambda: engines.version)
    learner_version = 0
    try:
        for step in range(1, 7):
            assert pipeline.take(step)[0] == step
            learner_version = step
            pipeline.sync(step, lambda s=step: engines.sync(s))
    finally:
        pipeline.close()
    assert ran_on == [loop_thread] and not engines.mixed


def test_a_failed_generation_is_raised_by_take_not_waited_for_forever():
    def produce(step):
        if step == 2:
            raise ValueError("bad row")
        return step

    pipeline = RolloutPipeline(produce, 1, last_step=5, held_version=lambda: 0)
    try:
        assert pipeline.take(1) == 1
        pipeline.sync(1, lambda: None)  # would wait for step 2's batch, which failed
        with pytest.raises(ValueError, match="bad row"):
            pipeline.take(2)
    finally:
        pipeline.close()
