"""Placement across nodes on one machine: a `ray.cluster_utils.Cluster` of simulated nodes with
their own CPUs, fake GPUs and marker resources. The workers are built as the driver builds them
(launch/factory.py from a composed `cluster=multinode` config); rollout actors must land on the
inference node, learner ranks on the training node, verifier actors on verifier nodes only, and
losing a verifier node between steps must not stop a short training run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf
from rich.console import Console

from launch.config import RunConfig, compose_config, validate
from launch.factory import RunWorkers
from launch.placement import check_resources, required_resources
from riskpo.options import ConfigError

# The multinode recipe, shrunk: 2 rollout actors on 2 inference GPUs, 2 learner ranks on 2
# training GPUs, 2 math verifiers on 2 verifier nodes; the GPUs are fake, so compute on CPU.
MULTINODE = [
    "cluster=multinode",
    "cluster.device=cpu",
    "cluster.rollout_resource=inference_node",
    "cluster.learner_resource=training_node",
    "rollout.num_actors=2",
    "learner.num_ranks=2",
    "verifier.num_math_actors=2",
    "model.warmstart.enabled=false",
    "trainer.prompts_per_step=5",
    "trainer.samples_per_prompt=4",
    "trainer.eval_every=0",
    "trainer.eval_before_training=false",
    "data.eval.size=5",
    "logger.backend=none",
    "logger.progress=none",
    "logger.plots=false",
]
NODE_OBJECT_STORE = 100 * 1024 * 1024


def compose(run_dir: Path | None = None, extra: list[str] | None = None) -> Any:
    return compose_config([*MULTINODE, *(extra or []), *([f"run_dir={run_dir}"] if run_dir else [])])


# --------------------------------------------------------------------------- no Ray needed


def test_resources_the_multinode_config_asks_for():
    run = validate(compose())
    assert required_resources(run) == {"CPU": 2 + 2 + 2, "GPU": 2 + 2, "inference_node": 2,
                                       "training_node": 2, "verifier_node": 2}
    colocated = validate(compose_config(["cluster=1node-4gpu"]))
    assert required_resources(colocated)["GPU"] == 4  # shared, not 4 + 4


def test_a_cluster_without_the_verifier_resource_is_a_config_error():
    run = validate(compose())
    enough = {"CPU": 16, "GPU": 4, "inference_node": 2, "training_node": 2}
    with pytest.raises(ConfigError) as error:
        check_resources(run, enough)
    assert error.value.key == "cluster.verifier_resource"
    assert "'verifier_node'" in str(error.value) and "no node advertises it" in str(error.value)
    check_resources(run, {**enough, "verifier_node": 2})


def test_colocation_pairs_actors_and_ranks():
    with pytest.raises(ConfigError) as error:
        validate(compose_config(["cluster=1node-4gpu", "rollout.num_actors=2"]))
    assert error.value.key == "cluster.colocate"


# --------------------------------------------------------------------------- simulated cluster


def _restore_session_cluster() -> None:
    """Brings back the local cluster of tests/conftest.py's session fixture (same settings),
    which this module had to shut down: the fixture does not start it again."""
    import ray

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024 * 1024, _temp_dir=os.environ["RAY_TMPDIR"])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Head (no CPUs: nothing lands there), an inference node and a training node with 2 fake
    GPUs each, two CPU verifier nodes, a node with 2 fake GPUs for the colocated layout; the
    test process is the driver."""
    import ray
    from ray.cluster_utils import Cluster

    had_session_cluster = ray.is_initialized()
    if had_session_cluster:
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="raymn", dir="/tmp")
    session_tmpdir = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir  # Ray writes the cluster's address file in <it>/ray
    os.makedirs(os.path.join(temp_dir, "ray"))
    simulated = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "temp_dir": temp_dir, "object_store_memory": NODE_OBJECT_STORE,
        "include_dashboard": False})
    node = {"object_store_memory": NODE_OBJECT_STORE}
    simulated.nodes_by_role = {
        "inference": simulated.add_node(num_cpus=2, num_gpus=2, resources={"inference_node": 2}, **node),
        "training": simulated.add_node(num_cpus=2, num_gpus=2, resources={"training_node": 2}, **node),
        "verifier_a": simulated.add_node(num_cpus=2, resources={"verifier_node": 2}, **node),
        "verifier_b": simulated.add_node(num_cpus=2, resources={"verifier_node": 2}, **node),
        "colocated": simulated.add_node(num_cpus=3, num_gpus=2, resources={"colocated_node": 2}, **node),
    }
    simulated.wait_for_nodes()
    ray.init(address=simulated.address, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}})
    try:
        yield simulated
    finally:
        ray.shutdown()
        simulated.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if session_tmpdir is None:
            del os.environ["RAY_TMPDIR"]
        else:
            os.environ["RAY_TMPDIR"] = session_tmpdir
        if had_session_cluster:
            _restore_session_cluster()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("multinode")


@pytest.fixture(scope="module")
def placed(cluster, run_dir) -> Iterator[tuple[RunConfig, RunWorkers]]:
    """The run's workers, built as launch/train.py builds them (connect_ray checks resources)."""
    from launch.factory import build_workers, connect_ray, prepare_model

    console = Console(stderr=True, quiet=True)
    run = validate(compose(run_dir, ["trainer.total_steps=3"]))
    assert connect_ray(run, console) is False  # joined the simulated cluster, did not start one
    workers = build_workers(run, prepare_model(run, console), console)
    try:
        yield run, workers
    finally:
        workers.shutdown()


def actor_node(handle: Any) -> str:
    """The node id hosting an actor, from the GCS actor table (no dashboard needed)."""
    from ray._private.state import actors

    return actors(handle._actor_id.hex())["Address"]["NodeID"]


def wait_for_actor_node(handle: Any, timeout_s: float = 60.0) -> str:
    """The node of an actor once it is alive again (after a restart)."""
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(handle.ping.remote(), timeout=5)
            return actor_node(handle)
        except (ray.exceptions.RayError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def placement_group_table(group: Any) -> dict[str, Any]:
    from ray.util import placement_group_table as table

    return table(group)


def node_ids(cluster: Any, *roles: str) -> set[str]:
    return {cluster.nodes_by_role[role].node_id for role in roles}


@pytest.mark.slow
def test_actors_land_where_the_cluster_config_says(cluster, placed):
    _, workers = placed
    rollout_nodes = {actor_node(actor) for actor in workers.rollout.actors}
    learner_nodes = {actor_node(rank) for rank in workers.learner.workers}
    verifier_nodes = {actor_node(actor) for actor in workers.verifiers.actors["math"]}
    assert rollout_nodes == node_ids(cluster, "inference")
    assert learner_nodes == node_ids(cluster, "training")
    assert verifier_nodes <= node_ids(cluster, "verifier_a", "verifier_b")
    assert len(workers.verifiers.actors["math"]) == 2
    # One group reserved all or nothing: a bundle per learner rank, per rollout actor and per
    # verifier actor, each with its fake GPU and marker (the compute runs on CPU).
    (gang,) = workers.placement_groups
    assert workers.learner.placement_group is gang
    table = placement_group_table(gang)
    assert list(table["bundles"].values()) == (
        [{"CPU": 1.0, "GPU": 1.0, "training_node": 1.0}] * 2
        + [{"CPU": 1.0, "GPU": 1.0, "inference_node": 1.0}] * 2
        + [{"CPU": 1.0, "verifier_node": 1.0}] * 2)
    nodes = [table["bundles_to_node_id"][index] for index in sorted(table["bundles_to_node_id"])]
    assert set(nodes[:2]) == node_ids(cluster, "training")
    assert set(nodes[2:4]) == node_ids(cluster, "inference")
    assert set(nodes[4:]) <= node_ids(cluster, "verifier_a", "verifier_b")


@pytest.mark.slow
def test_colocated_rollout_and_learner_share_bundles_and_gpus(cluster, placed):
    """Colocated on the 2-GPU node: rollout actor i and learner rank i share bundle i (half a GPU
    each), so 2 actors + 2 ranks fit on 2 GPUs; disaggregated they would need 4."""
    from launch.factory import build_workers, prepare_model

    console = Console(stderr=True, quiet=True)
    run = validate(compose(extra=[
        "cluster.colocate=true", "cluster.placement_strategy=STRICT_PACK",
        "cluster.rollout_resource=colocated_node", "cluster.learner_resource=colocated_node",
        "cluster.rollout_cpus_per_actor=0.5", "cluster.learner_cpus_per_rank=0.5",
        "cluster.verifier_resource=null", "verifier.num_math_actors=1"]))
    workers = build_workers(run, prepare_model(run, console), console)
    try:
        (shared,) = workers.placement_groups
        assert workers.learner.placement_group is shared
        table = placement_group_table(shared)
        assert list(table["bundles"].values()) == [{"CPU": 1.0, "GPU": 1.0, "colocated_node": 1.0}] * 2
        colocated = node_ids(cluster, "colocated")
        assert set(table["bundles_to_node_id"].values()) == colocated
        assert {actor_node(actor) for actor in workers.rollout.actors} == colocated
        assert {actor_node(rank) for rank in workers.learner.workers} == colocated
        # The engines answer and a weight sync reaches both (gloo: device=cpu).
        assert workers.weight_sync.sync(7)["sync/weight_version"] == 7.0
        assert workers.rollout.weight_versions() == [7, 7]
    finally:
        workers.shutdown()


@pytest.mark.slow
def test_losing_a_verifier_node_does_not_stop_the_run(cluster, placed, run_dir):
    from riskpo.data.loaders import load_train_and_eval
    from riskpo.loop.trainer import Trainer
    from riskpo.run.record import RunLogger

    run, workers = placed
    console = Console(stderr=True, quiet=True)
    train_rows, eval_rows = load_train_and_eval(run.data)
    logger = RunLogger(run_dir, run.logger, OmegaConf.to_container(compose(run_dir), resolve=True),
                       3, "multinode", console=console)
    verifier_actors = workers.verifiers.actors["math"]
    lost_node = actor_node(verifier_actors[0])
    role = next(r for r, n in cluster.nodes_by_role.items() if n.node_id == lost_node)
    survivor = node_ids(cluster, "verifier_a", "verifier_b") - {lost_node}
    try:
        trainer = Trainer(run, workers, train_rows, eval_rows, logger, run_dir)
        for step in (1, 2, 3):
            if step == 2:  # between steps: the verifier node goes away with its actors
                cluster.remove_node(cluster.nodes_by_role.pop(role))
            trainer.step = step
            metrics = trainer.train_step()
            logger.log_step(metrics)
            assert metrics["train/samples"] == 5 * 4  # nothing silently dropped
            assert metrics["train/masked_samples"] + metrics["train/reward_count"] == 5 * 4
    finally:
        logger.close()
    assert {wait_for_actor_node(actor) for actor in verifier_actors} == survivor
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    restarted = [e for e in events if e["kind"] == "verifier/actor_restarted"]
    assert restarted and restarted[0]["step"] == 2, events
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


@pytest.mark.slow
def test_config_error_when_no_node_has_the_verifier_resource(cluster):
    from launch.factory import connect_ray

    run = validate(compose(extra=["cluster.verifier_resource=cpu_verifier"]))
    with pytest.raises(ConfigError) as error:
        connect_ray(run, Console(stderr=True, quiet=True))
    assert error.value.key == "cluster.verifier_resource"
    assert "cpu_verifier" in str(error.value)
