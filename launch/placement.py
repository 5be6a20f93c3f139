"""Where a run's actors go: the cluster options (`cluster.*`), the resources the actors ask
Ray for, and the placement groups that reserve them (see docs/cluster.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from riskpo.options import ConfigError, one_of, require
from workers.learner.config import LearnerConfig
from workers.rollout import EngineConfig
from workers.verifier.config import VerifierConfig

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
DEVICE_MODES = ("auto", "cpu")


@dataclass
class ClusterConfig:
    """The Ray cluster a run joins or starts, and the resources of each kind of actor."""

    name: str = "local"
    address: str | None = None  # null: RAY_ADDRESS if set, else start a local cluster
    connect_timeout_s: float = 15.0  # seconds to wait for an address that does not answer
    num_cpus: int | None = None  # local cluster only; null: Ray's default
    rollout_gpus_per_actor: float = 0.0
    learner_gpus_per_rank: float = 0.0
    rollout_cpus_per_actor: float = 1.0
    learner_cpus_per_rank: float = 1.0
    verifier_cpus_per_actor: float = 1.0
    # OpenMP threads of each rollout actor and learner rank; auto: the phases take turns on the
    # node's CPUs, or split them when they overlap (launch/machine.py thread_shares)
    rollout_threads_per_actor: int | str = "auto"
    learner_threads_per_rank: int | str = "auto"
    colocate: bool = False  # rollout actor i and learner rank i share bundle i (and its GPU)
    # Custom resources that mark nodes (`ray start --resources`). Each actor of the group takes
    # one unit, so a node advertising N hosts at most N of them; null: any node with room.
    verifier_resource: str | None = None  # verifier actors (CPU nodes)
    rollout_resource: str | None = None  # rollout actors (inference GPUs)
    learner_resource: str | None = None  # learner ranks (training GPUs)
    placement_strategy: str = "PACK"  # see PLACEMENT_STRATEGIES
    # auto: actors given GPUs use them; cpu: compute on CPU even where Ray hands out GPUs
    # (simulated clusters whose GPUs are only placement labels).
    device: str = "auto"

    def check(self, key: str) -> None:
        for name in ("rollout_gpus_per_actor", "learner_gpus_per_rank", "rollout_cpus_per_actor",
                     "learner_cpus_per_rank", "verifier_cpus_per_actor"):
            require(getattr(self, name) >= 0, f"{key}.{name}", "must be >= 0")
        for name in ("rollout_threads_per_actor", "learner_threads_per_rank"):
            value = getattr(self, name)
            counts = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            require(value == "auto" or counts, f"{key}.{name}",
                    f"{value!r} is no thread count", "use auto or an integer >= 1")
        one_of(self.placement_strategy, PLACEMENT_STRATEGIES, f"{key}.placement_strategy")
        require(self.connect_timeout_s > 0, f"{key}.connect_timeout_s", "must be > 0 seconds")
        require(self.num_cpus is None or self.num_cpus >= 1, f"{key}.num_cpus", "must be >= 1 or null")
        for name in MARKER_KEYS.values():
            require(getattr(self, name) is None or bool(getattr(self, name)), f"{key}.{name}",
                    "is empty", "name a custom resource or use null")
        one_of(self.device, DEVICE_MODES, f"{key}.device")
        if self.colocate:
            require(self.rollout_gpus_per_actor > 0 and self.learner_gpus_per_rank > 0, f"{key}.colocate",
                    "colocation shares GPUs, and this config gives rollout or learner none",
                    f"set {key}.rollout_gpus_per_actor and {key}.learner_gpus_per_rank, or colocate=false")
            require(self.rollout_gpus_per_actor == self.learner_gpus_per_rank <= 1, f"{key}.colocate",
                    f"rollout ({self.rollout_gpus_per_actor}) and learner ({self.learner_gpus_per_rank}) "
                    "gpus per actor must be equal and at most 1 to share one device",
                    "set both to 1 (or colocate=false)")


class PlacedRun(Protocol):
    """The parts of a run config that decide placement."""

    cluster: ClusterConfig
    rollout: EngineConfig
    learner: LearnerConfig
    verifier: VerifierConfig


# Placement. Where the strategy allows, one placement group holds every actor of the run: a
# bundle per learner rank, per rollout actor and per verifier actor ({CPU, GPU, its node marker};
# colocated: bundle i holds rollout actor i and learner rank i, each asking half of its GPU so
# Ray hands both the same device). Reserved all or nothing, so two runs sharing a cluster that
# fits one never each hold part of what they need and wait for each other: the second waits,
# holding nothing, until the first ends. When a node dies, Ray reschedules its bundles on the
# surviving nodes that have room (a verifier's on another node with the verifier marker) and
# restarts the actors there. STRICT_SPREAD, and STRICT_PACK onto different node markers, which
# one group cannot satisfy, keep the rollout actors (or colocated pairs) in their own group,
# the learner ranks in LearnerGroup's, and the verifiers as plain actors. A marker resource is
# one unit per actor: a node advertising N (launch/cluster: --verifier-slots N) hosts at most N.
MARKER_KEYS = {"verifier": "verifier_resource", "rollout": "rollout_resource",
               "learner": "learner_resource"}


def node_marker(run: PlacedRun, group: str) -> dict[str, float]:
    """{resource: 1} for the custom resource the cluster config names for group, else {}."""
    name = getattr(run.cluster, MARKER_KEYS[group])
    return {name: 1.0} if name else {}


def _cpu_gpu(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}


def rollout_bundle(run: PlacedRun) -> dict[str, float]:
    c = run.cluster
    return {**_cpu_gpu(c.rollout_cpus_per_actor, c.rollout_gpus_per_actor), **node_marker(run, "rollout")}


def learner_bundle(run: PlacedRun) -> dict[str, float]:
    c = run.cluster
    return {**_cpu_gpu(c.learner_cpus_per_rank, c.learner_gpus_per_rank), **node_marker(run, "learner")}


def shared_bundle(run: PlacedRun) -> dict[str, float]:
    """Colocated: one GPU share for a rollout actor and a learner rank, CPUs for both."""
    c = run.cluster
    cpus = c.rollout_cpus_per_actor + c.learner_cpus_per_rank
    return {**_cpu_gpu(cpus, c.learner_gpus_per_rank), **node_marker(run, "rollout"),
            **node_marker(run, "learner")}


def verifier_actor_resources(run: PlacedRun) -> dict[str, float]:
    return {"CPU": run.cluster.verifier_cpus_per_actor, **node_marker(run, "verifier")}


def _add(total: dict[str, float], resources: dict[str, float], times: int) -> None:
    for name, amount in resources.items():
        total[name] = total.get(name, 0.0) + amount * times


def required_resources(run: PlacedRun) -> dict[str, float]:
    """Logical CPUs, GPUs and node-marker resources the run's actors ask Ray for (the driver
    needs none)."""
    total = {"CPU": 0.0, "GPU": 0.0}
    if run.cluster.colocate:
        _add(total, shared_bundle(run), run.learner.num_ranks)
    else:
        _add(total, rollout_bundle(run), run.rollout.num_actors)
        _add(total, learner_bundle(run), run.learner.num_ranks)
    verifiers = run.verifier.num_math_actors + run.verifier.num_code_actors
    _add(total, verifier_actor_resources(run), verifiers)
    return total


def check_resources(run: PlacedRun, available: dict[str, float]) -> None:
    """ConfigError naming the cluster key when the Ray cluster has fewer CPUs, GPUs or marker
    resources than the run's actors need."""
    markers = {getattr(run.cluster, key): f"cluster.{key}" for key in MARKER_KEYS.values()}
    for resource, needed in required_resources(run).items():
        have = available.get(resource, 0.0)
        if needed <= have + 1e-9:
            continue
        if resource in markers:
            nodes = "no node advertises it" if have == 0 else f"the nodes advertise {have:g}"
            raise ConfigError(
                markers[resource], f"the actors need {needed:g} of the custom resource "
                f"{resource!r} (one per actor) but {nodes}",
                f"start nodes with ray start --resources='{{\"{resource}\": N}}' "
                "(launch/cluster: --verifier-slots N for verifier_node), or set it to null")
        key = "cluster.num_cpus" if resource == "CPU" else "cluster.rollout_gpus_per_actor"
        raise ConfigError(
            key, f"the actors need {needed:g} {resource}s but the Ray cluster has {have:g}",
            "lower rollout.num_actors / learner.num_ranks / verifier actor counts or their "
            "cluster.*_per_actor shares, or add nodes (a local cluster: cluster.num_cpus=N)")


def computes_on_gpu(run: PlacedRun, gpus_per_actor: float) -> bool:
    """Whether an actor given gpus_per_actor GPUs computes on them (cluster.device=cpu: no)."""
    return gpus_per_actor > 0 and run.cluster.device != "cpu"


def reserve_bundles(bundles: list[dict[str, float]], strategy: str, what: str,
                    timeout_s: float = 300.0) -> Any:
    """A ready placement group, or a RuntimeError naming what could not be placed."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group(bundles, strategy=strategy)
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        kinds = [b for i, b in enumerate(bundles) if b not in bundles[:i]]
        shown = " + ".join(f"{bundles.count(b)} x {b}" for b in kinds)
        raise RuntimeError(
            f"the cluster cannot place {what}: {shown} ({strategy}) within {timeout_s:.0f} s; "
            "check `ray status` against cluster.* (another run may hold the resources)") from None
    return group


@dataclass
class Placement:
    """Where a run's actors go: placement groups and bundle indices (None: not in a group)."""

    groups: list[Any]  # what build_workers removes at shutdown
    rollout: Any
    rollout_bundles: list[int] | None
    learner: Any | None  # None: LearnerGroup reserves its own group, one bundle per rank
    verifier: Any | None = None
    verifier_bundles: list[int] | None = None


def one_gang(run: PlacedRun) -> bool:
    """Whether one placement group can hold all the run's actors under its strategy."""
    c = run.cluster
    if c.placement_strategy == "STRICT_SPREAD":
        return False
    markers = [node_marker(run, group) for group in ("rollout", "learner")]
    if run.verifier.num_math_actors + run.verifier.num_code_actors:
        markers.append(node_marker(run, "verifier"))
    return c.placement_strategy != "STRICT_PACK" or all(m == markers[0] for m in markers)


def reserve_placement(run: PlacedRun) -> Placement:
    """One group, reserved all or nothing, for every actor of the run where the strategy allows
    (learner ranks, then rollout actors, then verifier actors; colocated: bundle i shared by
    rollout actor i and learner rank i, then the verifiers). Otherwise the rollout actors (or the
    colocated pairs) get a group and the verifiers are plain actors."""
    c, ranks, actors = run.cluster, run.learner.num_ranks, run.rollout.num_actors
    verifiers = run.verifier.num_math_actors + run.verifier.num_code_actors
    gang = one_gang(run)
    tail = [verifier_actor_resources(run)] * verifiers if gang else []
    if c.colocate:
        head, what = [shared_bundle(run)] * ranks, "the colocated rollout actors and learner ranks"
    elif gang:
        head = [learner_bundle(run)] * ranks + [rollout_bundle(run)] * actors
        what = "the learner ranks and rollout actors"
    else:
        head, what = [rollout_bundle(run)] * actors, "the rollout actors"
    group = reserve_bundles(head + tail, c.placement_strategy,
                            what + (" and verifier actors" if tail else ""))
    placement = Placement(groups=[group], rollout=group, rollout_bundles=None, learner=None)
    if c.colocate:
        placement.learner = group
    elif gang:
        placement.learner, placement.rollout_bundles = group, list(range(ranks, ranks + actors))
    if tail:
        placement.verifier = group
        placement.verifier_bundles = list(range(len(head), len(head) + verifiers))
    return placement
