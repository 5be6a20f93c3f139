"""Ray layer: async verifier actors (one kind each) and a pool that spreads rows across them.

The pool sends chunks of rows with a bounded number in flight per actor (backpressure), keeps a
batch deadline, and never retries a chunk: rows of a chunk whose actor died get infra_error
(Ray restarts the actor for the next chunks, up to max_restarts).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from workers.verifier import results as R
from workers.verifier.code import CodeLimits, CodeVerifier
from workers.verifier.countdown import CountdownLimits, CountdownVerifier
from workers.verifier.executor import CodeExecutor, ExecLimits
from workers.verifier.math_verifier import MathLimits, MathVerifier

KINDS = ("math", "code")  # kinds of actor: a row's "kind" names the one that grades it
# Graders the math actors run besides the math answer verifier, by a row's "grader": Countdown
# expressions are graded in-process, bounded.
MATH_GRADERS = ("countdown",)
PING_BACKOFF_S = 0.2


@dataclass(frozen=True)
class VerifierLimits:
    """Everything the pool and its actors are tuned by; defaults suit a 2-core machine."""

    code: CodeLimits = field(default_factory=CodeLimits)
    sandbox: ExecLimits = field(default_factory=ExecLimits)
    math: MathLimits = field(default_factory=MathLimits)
    countdown: CountdownLimits = field(default_factory=CountdownLimits)
    code_slots_per_actor: int = 2
    strict_sandbox: bool = False  # refuse to start a code actor without every isolation layer
    chunk_size: int = 8
    max_in_flight_per_actor: int = 2
    max_restarts: int = 3
    actor_num_cpus: float = 1.0
    # Custom Ray resources each actor asks for, e.g. {"verifier_node": 1}: actors (and their
    # restarts after a node is lost) then land only on nodes that advertise them.
    actor_resources: dict[str, float] = field(default_factory=dict)


class VerifierActor:
    """Verifies rows of one kind; blocking work runs on threads, untrusted work in children."""

    def __init__(self, kind: str, limits: VerifierLimits) -> None:
        if kind == "math":
            self.verifier: Any = MathVerifier(limits.math)
            self.countdown = CountdownVerifier(limits.countdown)
            threads = 1
        else:
            executor = CodeExecutor(limits.code_slots_per_actor, limits.sandbox,
                                    strict=limits.strict_sandbox)
            self.verifier = CodeVerifier(executor, limits.code)
            threads = limits.code_slots_per_actor
        self.kind = kind
        self.threads = ThreadPoolExecutor(max_workers=threads)
        self.pid = os.getpid()  # a new pid after a restart tells the pool the actor came back

    async def verify(self, rows: list[dict], deadline_unix: float) -> list[dict]:
        """Results for rows in order; deadline_unix is wall-clock (time.time()) seconds."""
        deadline = time.monotonic() + (deadline_unix - time.time())
        loop = asyncio.get_running_loop()
        if self.kind == "math":
            return await loop.run_in_executor(self.threads, self._verify_math_rows, rows, deadline)
        calls = [loop.run_in_executor(self.threads, self.verifier.verify, row, deadline)
                 for row in rows]
        return list(await asyncio.gather(*calls))

    def _verify_math_rows(self, rows: list[dict], deadline: float) -> list[dict]:
        """Math answers through the worker processes, Countdown expressions (grader
        "countdown") in-process."""
        countdown = [i for i, row in enumerate(rows) if row.get("grader") == "countdown"]
        if not countdown:
            return self.verifier.verify_many(rows, deadline)
        results: list[dict | None] = [None] * len(rows)
        chosen = set(countdown)
        math_rows = [i for i in range(len(rows)) if i not in chosen]
        for indices, verifier in ((math_rows, self.verifier), (countdown, self.countdown)):
            if indices:
                for index, result in zip(indices, verifier.verify_many([rows[i] for i in indices], deadline),
                                         strict=True):
                    results[index] = result
        return results  # type: ignore[return-value]

    async def ping(self) -> int:
        return self.pid

    async def layers(self) -> dict[str, Any]:
        return self.verifier.layers


class VerifierPool:
    """Spreads verification rows over actors per kind; results come back in input order.

    rows: {"kind": "math", "response", "ground_truth", "data_source"?, "answer_format"?},
          {"kind": "math", "grader": "countdown", "response",
           "ground_truth": {"target", "numbers"}} or
          {"kind": "code", "response" | "code", "tests": {...}}; any "id" is echoed back. A row
    of another kind, or with a grader its kind does not run, gets bad_input.
    """

    def __init__(self, kind_to_num_actors: dict[str, int],
                 limits: VerifierLimits | None = None, *,
                 placement_group: PlacementGroup | None = None,
                 bundle_indices: list[int] | None = None, wait: bool = True) -> None:
        """placement_group: actor j (counting kinds in order) goes to bundle bundle_indices[j]
        of it (default j); each bundle must hold the actor's CPUs and resources. wait=False:
        return once the actors are created; call wait_ready() before using the pool."""
        self.limits = limits or VerifierLimits()
        unknown = set(kind_to_num_actors) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown verifier kinds {sorted(unknown)}; expected {KINDS}")
        counts = {kind: count for kind, count in kind_to_num_actors.items() if count > 0}
        total = sum(counts.values())
        if placement_group is not None and bundle_indices is not None and len(bundle_indices) != total:
            raise ValueError(f"VerifierPool: {len(bundle_indices)} bundle_indices for {total} actors")
        actor_class = ray.remote(VerifierActor)
        options = {"num_cpus": self.limits.actor_num_cpus,
                   "resources": dict(self.limits.actor_resources),
                   "max_restarts": self.limits.max_restarts, "max_task_retries": 0}
        bundles = iter(bundle_indices if bundle_indices is not None else range(total))

        def start(kind: str) -> Any:
            if placement_group is not None:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group, next(bundles))
            return actor_class.options(**options).remote(kind, self.limits)

        self.actors = {kind: [start(kind) for _ in range(count)] for kind, count in counts.items()}
        self.layers: dict[str, Any] = {}
        self._pids: dict[tuple[str, int], Any] = {}
        self._events: list[dict[str, Any]] = []
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Returns when every actor answers: the sandbox layers each kind's first actor found,
        and every actor's pid (to tell a restarted actor later)."""
        self.layers = {kind: ray.get(actors[0].layers.remote())
                       for kind, actors in self.actors.items()}
        self._pids = {(kind, i): ray.get(actor.ping.remote())
                      for kind, actors in self.actors.items() for i, actor in enumerate(actors)}

    def drain_events(self) -> list[dict[str, Any]]:
        """Faults since the last call (failed chunks, restarted actors), oldest first."""
        events, self._events = self._events, []
        return events

    def verify_batch(self, rows: list[dict], deadline_s: float = 600.0) -> list[dict]:
        """One result per row, in order, within deadline_s seconds from now."""
        deadline_unix = time.time() + deadline_s
        results: list[dict | None] = [None] * len(rows)
        chunks: deque = deque()
        for kind, indices in self._group(rows, results).items():
            for start in range(0, len(indices), self.limits.chunk_size):
                chunks.append((kind, indices[start:start + self.limits.chunk_size]))
        self._run(rows, chunks, results, deadline_unix)
        return results  # type: ignore[return-value]

    def shutdown(self) -> None:
        for actors in self.actors.values():
            for actor in actors:
                ray.kill(actor)
        self.actors = {}

    def _group(self, rows: list[dict], results: list) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {kind: [] for kind in self.actors}
        for index, row in enumerate(rows):
            kind = row.get("kind") if isinstance(row, dict) else None
            grader = row.get("grader") if isinstance(row, dict) else None
            if kind in groups and (grader is None or (kind == "math" and grader in MATH_GRADERS)):
                groups[kind].append(index)
            else:
                row_id = row.get("id") if isinstance(row, dict) else None
                what = f"kind {kind!r}" + (f" with grader {grader!r}" if grader is not None else "")
                results[index] = R.make_result(row_id, R.BAD_INPUT, message=f"no verifier for {what}")
        return groups

    def _run(self, rows: list[dict], chunks: deque, results: list, deadline_unix: float) -> None:
        in_flight: dict[Any, tuple[str, int, list[int]]] = {}
        load = {(kind, i): 0 for kind, actors in self.actors.items() for i in range(len(actors))}
        healthy = self._healthy_actors(deadline_unix)
        while (chunks and healthy) or in_flight:
            self._submit(rows, chunks, in_flight, load, healthy, deadline_unix)
            remaining = deadline_unix - time.time()
            if remaining <= 0:
                break
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=remaining)
            for ref in done:
                kind, actor_index, indices = in_flight.pop(ref)
                load[(kind, actor_index)] -= 1
                if not self._store(ref, indices, rows, results):
                    healthy.discard((kind, actor_index))
                    self._events.append({
                        "kind": "chunk_failed", "actor": f"{kind}[{actor_index}]",
                        "message": f"{len(indices)} rows masked (infra_error): their {kind} "
                                   f"verifier {actor_index} failed; not retried"})
            if chunks and not in_flight:
                healthy = self._healthy_actors(deadline_unix)
                self._drop_orphans(chunks, healthy, rows, results)
        for ref, (_, _, indices) in in_flight.items():
            ray.cancel(ref, force=False)
            self._fail(indices, rows, results, "batch deadline passed")
        for _, indices in chunks:
            self._fail(indices, rows, results, "no verifier actor available before the deadline")

    def _drop_orphans(self, chunks: deque, healthy: set, rows: list[dict],
                      results: list) -> None:
        """Fail the chunks of a kind that has no live actor left."""
        live_kinds = {kind for kind, _ in healthy}
        for kind, indices in [chunk for chunk in chunks if chunk[0] not in live_kinds]:
            chunks.remove((kind, indices))
            self._fail(indices, rows, results, f"no live {kind} verifier actor")

    def _healthy_actors(self, deadline_unix: float) -> set[tuple[str, int]]:
        """Actors answering a ping; a restarting actor is waited for (pings are no payload)."""
        healthy: set[tuple[str, int]] = set()
        waiting = {(kind, i) for kind, actors in self.actors.items() for i in range(len(actors))}
        while waiting and time.time() < deadline_unix:
            pings = {self.actors[kind][i].ping.remote(): (kind, i) for kind, i in waiting}
            for ref, key in pings.items():
                try:
                    pid = ray.get(ref, timeout=max(deadline_unix - time.time(), 0.01))
                except ray.exceptions.ActorDiedError:
                    waiting.discard(key)  # out of restarts: it stays out of the pool
                    self._events.append({"kind": "actor_lost", "actor": f"{key[0]}[{key[1]}]",
                                         "message": f"{key[0]} verifier {key[1]} is out of restarts"})
                except (ray.exceptions.RayError, TimeoutError):
                    continue
                else:
                    healthy.add(key)
                    waiting.discard(key)
                    if self._pids.get(key) != pid:
                        self._pids[key] = pid
                        self._events.append({"kind": "actor_restarted", "actor": f"{key[0]}[{key[1]}]",
                                             "message": f"{key[0]} verifier {key[1]} was restarted"})
            if waiting:
                time.sleep(PING_BACKOFF_S)
        return healthy

    def _submit(self, rows: list[dict], chunks: deque, in_flight: dict, load: dict,
                healthy: set, deadline_unix: float) -> None:
        """Send chunks to the least-loaded healthy actor of their kind, up to its in-flight cap."""
        pending: deque = deque()
        while chunks:
            kind, indices = chunks.popleft()
            candidates = [key for key in load if key[0] == kind and key in healthy]
            key = min(candidates, key=load.get) if candidates else None
            if key is None or load[key] >= self.limits.max_in_flight_per_actor:
                pending.append((kind, indices))
                continue
            actor = self.actors[kind][key[1]]
            ref = actor.verify.remote([rows[i] for i in indices], deadline_unix)
            in_flight[ref] = (kind, key[1], indices)
            load[key] += 1
        chunks.extend(pending)

    @staticmethod
    def _store(ref: Any, indices: list[int], rows: list[dict], results: list) -> bool:
        """Store a chunk's results; on failure mask its rows (never retried) and return False."""
        try:
            chunk_results = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - actor death or error: masked, no retry
            VerifierPool._fail(indices, rows, results, f"verifier actor failed: {exc}"[:300])
            return False
        for index, result in zip(indices, chunk_results, strict=True):
            results[index] = result
        return True

    @staticmethod
    def _fail(indices: list[int], rows: list[dict], results: list, message: str) -> None:
        for index in indices:
            results[index] = R.make_result(rows[index].get("id"), R.INFRA_ERROR, message=message)
