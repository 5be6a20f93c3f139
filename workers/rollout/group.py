"""The rollout group: several rollout actors behind one generate call. Prompts go out in
chunks to the least-loaded actor (by outstanding estimated tokens), results come back in
prompt order, and a chunk lost with a dead actor is resubmitted once (Ray restarts the actor).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from riskpo.messages import Completion, Prompt, SamplingParams
from workers.rollout import ENGINE_CAPABILITIES
from workers.rollout.actor import RolloutActor
from workers.weight_sync import SyncGroupAddress, WeightManifest

ACTOR_LOST_ERRORS = (RayActorError, ActorUnavailableError)
DEFAULT_CHUNKS_PER_ACTOR = 4  # an engine that batches only within a call: room to rebalance


def batches_continuously(engine_kind: Any) -> bool:
    """Whether the engine kind schedules a call's requests together (ENGINE_CAPABILITIES;
    an engine class or module path given directly: no)."""
    return isinstance(engine_kind, str) and ENGINE_CAPABILITIES.get(engine_kind, {}).get(
        "continuous_batching", False)


class RolloutLostError(RuntimeError):
    """A chunk of prompts failed on two actors in a row: the step cannot be completed."""


@dataclass
class RolloutEvent:
    """Something the driver should log: an actor died under a chunk, which was resubmitted."""

    kind: str  # "actor_died"
    actor_index: int
    prompt_indices: list[int]
    error: str


@dataclass
class Chunk:
    prompt_indices: list[int]
    work: int  # estimated tokens: n x (prompt + max new tokens)
    failed_on: int | None = None  # actor index of the first failure


class LeastLoadedScheduler:
    """Picks the actor with the least outstanding work that has a free in-flight slot."""

    def __init__(self, num_actors: int, max_inflight_per_actor: int):
        self.outstanding_work = [0] * num_actors
        self.inflight = [0] * num_actors
        self.max_inflight_per_actor = max_inflight_per_actor

    def pick(self, avoid: int | None = None) -> int | None:
        """Least-loaded actor with a free slot, never `avoid` unless it is the only actor
        (a restarted actor has lost its synced weights). None: wait for a slot."""
        actors = range(len(self.inflight))
        candidates = [a for a in actors if a != avoid] if len(self.inflight) > 1 else list(actors)
        free = [a for a in candidates if self.inflight[a] < self.max_inflight_per_actor]
        if not free:
            return None
        return min(free, key=lambda a: (self.outstanding_work[a], self.inflight[a], a))

    def start(self, actor: int, work: int) -> None:
        self.outstanding_work[actor] += work
        self.inflight[actor] += 1

    def finish(self, actor: int, work: int) -> None:
        self.outstanding_work[actor] -= work
        self.inflight[actor] -= 1


def estimated_prompt_length(prompt: Prompt) -> int:
    """Token count for ids; character count (an upper-bound proxy) for text and messages."""
    if prompt.token_ids is not None:
        return len(prompt.token_ids)
    if prompt.text is not None:
        return len(prompt.text)
    return sum(len(message.get("content", "")) for message in prompt.messages or [])


def make_chunks(prompts: list[Prompt], params: SamplingParams, chunk_size: int) -> list[Chunk]:
    """Consecutive prompts, chunk_size at a time, each with its estimated work."""
    chunks = []
    for start in range(0, len(prompts), chunk_size):
        indices = list(range(start, min(start + chunk_size, len(prompts))))
        work = sum(
            params.n * (estimated_prompt_length(prompts[i]) + params.max_new_tokens)
            for i in indices
        )
        chunks.append(Chunk(indices, work))
    return chunks


class RolloutGroup:
    """num_actors RolloutActors, each building its engine with make_engine(engine_kind,
    model_path, **engine_kwargs). Placement: num_cpus/num_gpus per actor, or a placement
    group with one bundle per actor (bundle_indices default to 0..num_actors-1). A call's
    prompts go out in chunks_per_actor chunks per actor (None: one for an engine that batches
    continuously, vLLM; else DEFAULT_CHUNKS_PER_ACTOR).

    A restarted actor comes back with the weights at model_path (weight_version None):
    weight_versions() shows it, and the next weight sync covers it (the weight-sync object asks
    sync_states() and has the actors join again)."""

    def __init__(
        self,
        num_actors: int,
        engine_kind: Any,
        model_path: str | Path,
        engine_kwargs: dict[str, Any] | None = None,
        *,
        num_cpus_per_actor: float = 1,
        num_gpus_per_actor: float = 0,
        placement_group: PlacementGroup | None = None,
        bundle_indices: list[int] | None = None,
        max_restarts: int = 2,
        chunks_per_actor: int | None = None,
        max_inflight_per_actor: int = 2,
        runtime_env: dict[str, Any] | None = None,
        wait: bool = True,
    ):
        """wait=False: return once the actors are created (their engines load meanwhile);
        call wait_ready() before using the group."""
        if num_actors < 1:
            raise ValueError(f"RolloutGroup: num_actors must be >= 1, got {num_actors}")
        if chunks_per_actor is None:
            chunks_per_actor = 1 if batches_continuously(engine_kind) else DEFAULT_CHUNKS_PER_ACTOR
        if chunks_per_actor < 1 or max_inflight_per_actor < 1:
            raise ValueError(
                "RolloutGroup: chunks_per_actor and max_inflight_per_actor must be >= 1"
            )
        if bundle_indices is not None and len(bundle_indices) != num_actors:
            raise ValueError(
                f"RolloutGroup: {len(bundle_indices)} bundle_indices for {num_actors} actors"
            )
        self.chunks_per_actor = chunks_per_actor
        self.max_inflight_per_actor = max_inflight_per_actor
        self.events: list[RolloutEvent] = []
        self.failures_total = 0
        self._metrics: dict[str, float] = {}
        remote_actor = ray.remote(RolloutActor)
        self.actors = []
        for index in range(num_actors):
            options: dict[str, Any] = {
                "num_cpus": num_cpus_per_actor,
                "num_gpus": num_gpus_per_actor,
                "max_restarts": max_restarts,
                "max_task_retries": 0,  # the group resubmits, so it can count and report
            }
            if runtime_env is not None:
                options["runtime_env"] = runtime_env
            if placement_group is not None:
                bundle = bundle_indices[index] if bundle_indices is not None else index
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=bundle
                )
            self.actors.append(
                remote_actor.options(**options).remote(engine_kind, str(model_path), engine_kwargs)
            )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Returns when every actor's engine has loaded (raises what an engine's start raised)."""
        ray.get([actor.ping.remote() for actor in self.actors])

    # ---- generation -------------------------------------------------------------------

    def generate(
        self, prompts: list[Prompt], params: SamplingParams, chunk_size: int | None = None
    ) -> list[list[Completion]]:
        """[prompt][sample] completions in prompt order. Raises RolloutLostError if a chunk
        fails twice; each failure is in self.events and in metrics()."""
        params.validate()
        started = time.perf_counter()
        chunk_size = chunk_size or math.ceil(
            len(prompts) / (len(self.actors) * self.chunks_per_actor)
        )
        pending = deque(make_chunks(prompts, params, max(1, chunk_size)))
        scheduler = LeastLoadedScheduler(len(self.actors), self.max_inflight_per_actor)
        running: dict[ray.ObjectRef, tuple[int, Chunk]] = {}
        results: list[list[Completion] | None] = [None] * len(prompts)
        failures = 0
        while pending or running:
            while pending and (actor := scheduler.pick(avoid=pending[0].failed_on)) is not None:
                chunk = pending.popleft()
                shard = [prompts[i] for i in chunk.prompt_indices]
                running[self.actors[actor].generate.remote(shard, params)] = (actor, chunk)
                scheduler.start(actor, chunk.work)
            [done], _ = ray.wait(list(running), num_returns=1)
            actor, chunk = running.pop(done)
            scheduler.finish(actor, chunk.work)
            try:
                completions = ray.get(done)
            except ACTOR_LOST_ERRORS as error:
                failures += 1
                pending.appendleft(self._after_actor_loss(actor, chunk, error))
                self._wait_for_restart(actor)  # else the resubmission can find it restarting
                continue
            for index, samples in zip(chunk.prompt_indices, completions, strict=True):
                results[index] = samples
        self._record_metrics(results, failures, time.perf_counter() - started)
        return results  # type: ignore[return-value]  # every slot is filled here

    def _wait_for_restart(self, actor: int, timeout_s: float = 300.0) -> None:
        """Returns once the actor answers a ping again, or Ray has given up on it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ray.get(self.actors[actor].ping.remote(), timeout=max(deadline - time.monotonic(), 0.1))
                return
            except ActorUnavailableError:
                time.sleep(0.2)
            except (RayActorError, ray.exceptions.GetTimeoutError):
                return  # out of restarts, or still not back: the scheduler works around it

    def _after_actor_loss(self, actor: int, chunk: Chunk, error: Exception) -> Chunk:
        self.failures_total += 1
        self.events.append(
            RolloutEvent("actor_died", actor, list(chunk.prompt_indices), repr(error)[:500])
        )
        if chunk.failed_on is not None:
            raise RolloutLostError(
                f"prompts {chunk.prompt_indices[0]}..{chunk.prompt_indices[-1]} failed on actor "
                f"{chunk.failed_on} and again on actor {actor}: {error!r}"
            ) from error
        chunk.failed_on = actor
        return chunk

    def _record_metrics(
        self, results: list[list[Completion] | None], failures: int, seconds: float
    ) -> None:
        tokens = sum(len(c.token_ids) for samples in results for c in samples or [])
        self._metrics = {
            "rollout/seconds": seconds,
            "rollout/response_tokens": float(tokens),
            "rollout/tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
            "rollout/actor_failures": float(failures),
            "rollout/resubmitted_chunks": float(failures),
            "rollout/actor_failures_total": float(self.failures_total),
        }

    def drain_events(self) -> list[dict[str, Any]]:
        """Actor failures since the last call, as plain dicts (kind, message, ...), oldest first."""
        events, self.events = self.events, []
        return [{"kind": e.kind, "actor": e.actor_index, "prompts": len(e.prompt_indices),
                 "message": f"actor {e.actor_index} died under {len(e.prompt_indices)} prompts "
                            f"(resubmitted once): {e.error[:200]}"} for e in events]

    def metrics(self) -> dict[str, float]:
        """Figures of the last generate call (and the running count of actor failures)."""
        return dict(self._metrics)

    # ---- the receiving end of the weight sync (workers/weight_sync/sync.py) -------------

    def weight_versions(self) -> list[int | None]:
        """The learner's version of the weights each engine holds (None: those at model_path)."""
        return self._call_every_actor("weight_version")

    def sync_states(self) -> list[dict[str, bool]]:
        """Per actor: joined (in the weight-sync group; a restarted actor is not) and sleeping."""
        return ray.get([actor.sync_state.remote() for actor in self.actors])

    def join_weight_sync(self, address: SyncGroupAddress) -> list[ray.ObjectRef]:
        """Has actor i join the group as receiver i + 1; the joins finish once the sender joins."""
        return [actor.join_weight_sync.remote(address, rank)
                for rank, actor in enumerate(self.actors, 1)]

    def receive_weights(self, manifest: WeightManifest, version: int) -> list[ray.ObjectRef]:
        """Has every actor load the broadcast weights, numbered `version`; each result is the
        version that actor then holds."""
        return [actor.receive_weights.remote(manifest, version) for actor in self.actors]

    # ---- the rest of the actor surface ------------------------------------------------

    def sleep(self) -> None:
        self._call_every_actor("sleep")

    def wake_up(self) -> None:
        self._call_every_actor("wake_up")

    def _call_every_actor(self, method: str, restart_timeout_s: float = 300.0) -> list[Any]:
        """One call per actor, waiting out actors that Ray is restarting."""
        deadline = time.monotonic() + restart_timeout_s
        results = []
        for actor in self.actors:
            while True:
                try:
                    results.append(ray.get(getattr(actor, method).remote()))
                    break
                except ActorUnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        return results

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
