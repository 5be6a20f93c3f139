"""Placement on a cluster shared by several runs: a run reserves all its actors (learner ranks,
rollout actors, verifier actors) all or nothing, so two runs that fit only one at a time queue
instead of deadlocking."""

from __future__ import annotations

import threading
import time

import pytest

from launch.config import compose_config, validate
from launch.placement import one_gang, reserve_placement

pytestmark = pytest.mark.slow
# 2.5 + 2.5 + 1 (verifier) CPUs per run on the session cluster's 8: one run fits, two do not.
BIG = ["cluster.rollout_cpus_per_actor=2.5", "cluster.learner_cpus_per_rank=2.5"]


def test_a_second_run_holds_nothing_until_the_first_releases(ray_cluster):
    from ray.util.placement_group import remove_placement_group

    ray = ray_cluster
    run = validate(compose_config(BIG))
    assert one_gang(run)
    placement = reserve_placement(run)
    (first,) = placement.groups
    assert placement.learner is first and placement.verifier is first
    # learner rank 0 in bundle 0, the rollout actor in 1, the math verifier in 2
    assert placement.rollout_bundles == [1] and placement.verifier_bundles == [2]
    free = ray.available_resources()["CPU"]
    reserved: list = []
    waiter = threading.Thread(target=lambda: reserved.append(reserve_placement(run)), daemon=True)
    waiter.start()
    time.sleep(3.0)
    # Pending, the second run's group holds none of the 2 CPUs left (reserved piece by piece,
    # its verifier would take 1 and wait for the rest: with two such runs started together,
    # each holding part, neither could ever finish).
    assert waiter.is_alive() and not reserved
    assert ray.available_resources()["CPU"] == pytest.approx(free)
    remove_placement_group(first)
    waiter.join(timeout=60)
    assert reserved, "the second run was not placed after the first released its group"
    remove_placement_group(reserved[0].groups[0])


def test_strategies_one_group_cannot_satisfy_keep_two_groups():
    spread = validate(compose_config(["cluster.placement_strategy=STRICT_SPREAD"]))
    assert not one_gang(spread)
    apart = validate(compose_config([
        "cluster.placement_strategy=STRICT_PACK", "cluster.rollout_resource=inference_node",
        "cluster.learner_resource=training_node"]))
    assert not one_gang(apart)
    together = validate(compose_config(["cluster.placement_strategy=STRICT_PACK"]))
    assert one_gang(together)
