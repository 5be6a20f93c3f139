"""The run config's `auto` values settle once at start-up, from the run's shape and the machine
(launch/settle.py, launch/machine.py), and the composed config (what config.yaml is written
from) records what they settled to."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

import riskpo.models.precision as precision
from launch import settle
from launch.config import compose_config, validate
from launch.machine import omp_env, thread_shares, vllm_thread_binding
from riskpo.options import ConfigError

ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16"})
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
AVX2 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize(("cpus", "actors", "ranks", "overlap", "expected"), [
    (2, 1, 1, False, (2, 2)),  # the pilot: generation, then training, each on both cores
    (2, 1, 1, True, (1, 1)),  # off_policy_steps > 0: they compute at once, one core each
    (16, 2, 4, False, (8, 4)),
    (16, 2, 4, True, (2, 2)),
    (1, 3, 2, False, (1, 1)),  # never fewer than one
    (3, 1, 1, True, (1, 1)),
])
def test_thread_shares_take_turns_in_the_synchronous_loop_and_split_when_overlapping(
        cpus, actors, ranks, overlap, expected):
    shares = thread_shares(cpus, actors, ranks, overlap)
    assert (shares.rollout, shares.learner) == expected
    assert (shares.verifier, shares.driver, shares.overlap) == (1, 1, overlap)


def test_a_thread_share_is_a_process_environment_with_passive_waiting():
    assert omp_env(3) == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    with pytest.raises(ValueError):
        thread_shares(0, 1, 1, False)


@pytest.mark.parametrize(("cpu_ids", "threads", "actors", "tensor_parallel", "binding"), [
    ([0, 1], 2, 1, 1, "0-1"),
    ([0, 1, 2, 3], 2, 1, 1, "0-1"),
    ([0, 1, 2, 3], 4, 1, 2, "0-1|2-3"),
    ([0, 2, 5], 3, 1, 1, "0,2,5"),
    ([0, 1, 2, 3], 2, 2, 1, "nobind"),  # actors sharing one runtime env cannot be told apart
])
def test_vllm_threads_are_bound_to_the_actors_share(cpu_ids, threads, actors, tensor_parallel, binding):
    assert vllm_thread_binding(cpu_ids, threads, actors, tensor_parallel) == binding


@pytest.fixture
def cpus(monkeypatch):
    """Pretends this machine has `count` CPUs with the given flags."""
    def pretend(count: int, flags: frozenset[str] = ZEN4, vendor: str = "AuthenticAMD") -> None:
        monkeypatch.setattr(settle, "node_cpu_ids", lambda limit=None: list(range(count))[:limit])
        monkeypatch.setattr(precision, "cpu_flags", lambda *args: flags)
        monkeypatch.setattr(precision, "cpu_vendor", lambda *args: vendor)
    return pretend


@pytest.mark.parametrize(("flags", "vendor", "overrides", "dtypes"), [
    (SAPPHIRE_RAPIDS, "GenuineIntel", [], ("bfloat16", "bfloat16")),
    (ZEN4, "AuthenticAMD", [], ("bfloat16", "bfloat16")),
    # the same bf16 vector units on an Intel CPU without AMX: the engines' decoding gains, the
    # learner's matmuls do not
    (ZEN4, "GenuineIntel", [], ("bfloat16", "float32")),
    (AVX2, "AuthenticAMD", [], ("float32", "float32")),
    (AVX2, "GenuineIntel", ["cluster=1node-4gpu"], ("bfloat16", "bfloat16")),  # both compute on GPUs
    (SAPPHIRE_RAPIDS, "GenuineIntel", ["learner.dtype=float32"], ("bfloat16", "float32")),
])
def test_dtype_auto_is_bf16_where_it_pays_for_each_side(cpus, flags, vendor, overrides, dtypes):
    """bench/learner_precision.py, a pilot-shaped learner step in bf16 against float32: 0.63x the
    time on an AMD EPYC with AVX512-BF16, 1.76x on a Xeon exposing AVX512-BF16 without AMX."""
    cpus(2, flags, vendor)
    run = validate(compose_config(["model.dtype=auto", "learner.dtype=auto", *overrides]))
    assert (run.model.dtype, run.learner.dtype) == dtypes


def test_the_pilot_takes_auto_and_the_tiny_default_float32(cpus):
    """The embedded default's learner is float32 by measurement (conf/learner/cpu.yaml); the
    SmolLM2 pilot's engines and learner take auto."""
    cpus(2)
    assert validate(compose_config([])).learner.dtype == "float32"
    assert compose_config(["experiment=smollm2-pilot"]).learner.dtype == "auto"


@pytest.mark.parametrize(("overrides", "correction"), [
    (["model.dtype=float32", "learner.dtype=float32"], "none"),
    (["model.dtype=float32", "learner.dtype=bfloat16"], "token"),
    (["model.dtype=bfloat16", "learner.dtype=bfloat16"], "token"),
    (["model.dtype=bfloat16", "learner.dtype=bfloat16", "rollout.top_p=0.9"], "none"),
    (["model.dtype=bfloat16", "learner.dtype=bfloat16", "algorithm.loss.importance_correction=none"], "none"),
])
def test_importance_correction_auto_follows_the_two_sides_dtypes(overrides, correction):
    """Below float32 the engines' and the learner's log-probs of one policy differ: the
    correction is on; with truncated sampling the engines' log-probs are not comparable and
    the on-policy loop runs without it."""
    assert validate(compose_config(overrides)).algorithm.loss.importance_correction == correction


@pytest.mark.parametrize(("overrides", "threads"), [
    ([], (4, 4)),
    (["trainer.off_policy_steps=1"], (2, 2)),
    (["rollout.num_actors=2"], (2, 4)),
    (["cluster.num_cpus=2"], (2, 2)),
    (["cluster.rollout_threads_per_actor=1", "cluster.learner_threads_per_rank=3"], (1, 3)),
])
def test_thread_counts_auto_settle_by_the_rule_over_this_machines_cpus(cpus, overrides, threads):
    """(The embedded default states one thread each, by measurement: its experiment file.)"""
    cpus(4)
    auto = ["cluster.rollout_threads_per_actor=auto", "cluster.learner_threads_per_rank=auto"]
    cluster = validate(compose_config([*auto, *overrides])).cluster
    assert (cluster.rollout_threads_per_actor, cluster.learner_threads_per_rank) == threads


def test_the_composed_config_records_what_every_auto_settled_to(cpus):
    """config.yaml is written from the composed config: it holds no `auto` of SETTLED_KEYS."""
    cpus(2, SAPPHIRE_RAPIDS)
    cfg = compose_config(["algorithm.loss.importance_correction=auto", "learner.dtype=auto",
                          "cluster.rollout_threads_per_actor=auto", "cluster.learner_threads_per_rank=auto"])
    assert cfg.learner.dtype == "auto" and cfg.cluster.learner_threads_per_rank == "auto"
    run = validate(cfg)
    for key in settle.SETTLED_KEYS:
        assert OmegaConf.select(cfg, key) not in ("auto", None), key
    assert (cfg.learner.dtype, cfg.cluster.learner_threads_per_rank) == ("bfloat16", 2)
    assert cfg.algorithm.loss.importance_correction == run.algorithm.loss.importance_correction


def test_a_section_the_preset_leaves_empty_is_recorded_whole(cpus):
    """A preset that selects no loss gets its estimator's recipe (launch/config.py run_schema):
    the settled importance correction is recorded with the loss the run used."""
    cpus(2)
    cfg = compose_config(["learner.dtype=bfloat16"])
    cfg.algorithm.loss = None
    run = validate(cfg)
    assert cfg.algorithm.loss.importance_correction == "token"
    assert OmegaConf.to_object(cfg.algorithm.loss) == run.algorithm.loss


def test_an_unknown_thread_count_is_refused_naming_the_key():
    with pytest.raises(ConfigError) as error:
        validate(compose_config(["cluster.learner_threads_per_rank=0"]))
    assert error.value.key == "cluster.learner_threads_per_rank"
