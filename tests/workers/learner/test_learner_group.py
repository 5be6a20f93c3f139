"""LearnerGroup on a local Ray cluster: 2 DeepSpeed ranks over gloo, ZeRO 2 and ZeRO 3.

Training lowers the loss on a fixed batch, a checkpoint round trip continues identically
(parameters and optimizer state), and the HF export loads with plain transformers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from riskpo.batch import TrainBatch
from riskpo.models.tiny import build_tiny_model
from workers.learner.config import LearnerConfig, LearnerSpec
from workers.learner.group import LearnerGroup

pytestmark = pytest.mark.slow


def make_batch(num_rows: int = 12, seed: int = 0) -> TrainBatch:
    """Random prompts and responses of varying length, advantages +-1, one masked-out row."""
    generator = torch.Generator().manual_seed(seed)
    prompts = [[1, *torch.randint(4, 60, (4,), generator=generator).tolist()] for _ in range(num_rows)]
    lengths = torch.randint(3, 10, (num_rows,), generator=generator).tolist()
    responses = [torch.randint(4, 60, (n,), generator=generator).tolist() for n in lengths]
    advantages = torch.tensor([1.0 if i % 2 else -1.0 for i in range(num_rows)])
    loss_mask = torch.ones(num_rows, dtype=torch.bool)
    loss_mask[3] = False
    return TrainBatch(prompts, responses, [[-4.0] * n for n in lengths], advantages, loss_mask)


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def learner_group(request: pytest.FixtureRequest, ray_cluster, tiny_model_path: Path):
    config = LearnerConfig(
        num_ranks=2,
        zero_stage=request.param,
        dtype="float32",
        lr=3e-3,
        num_mini_batches=2,
        micro_batch_token_budget=40,  # several micro-batches per rank, unequal counts
    )
    group = LearnerGroup(str(tiny_model_path), LearnerSpec(config))
    yield group
    group.shutdown()


def test_logprobs_cover_every_response_token(learner_group: LearnerGroup, tiny_model_path: Path) -> None:
    """The ranks keep the old log-probs; the gap they report against rollout log-probs of 0
    is the mean negative log-likelihood of every loss row's response tokens, as plain
    transformers computes it with the learner's current weights."""
    batch = make_batch()
    batch.rollout_logprobs = [[0.0] * len(r) for r in batch.response_ids]
    gap = learner_group.compute_logprobs(batch)["rollout_learner_logprob_gap"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    model.load_state_dict(learner_group.state_dict(), strict=False)  # lm_head is tied
    total, tokens = 0.0, 0
    for prompt, response, keep in zip(batch.prompt_ids, batch.response_ids, batch.loss_mask, strict=True):
        if keep:
            with torch.no_grad():
                logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(response)[:, None])
            total += float(-logprobs.sum())
            tokens += len(response)
    assert gap == pytest.approx(total / tokens, rel=1e-4)


def test_loss_goes_down_on_a_fixed_batch(learner_group: LearnerGroup) -> None:
    batch = make_batch(seed=1)
    gap = learner_group.compute_logprobs(batch)["rollout_learner_logprob_gap"]
    metrics = [learner_group.train_step(batch) for _ in range(3)]
    losses = [m["loss"] for m in metrics]
    assert losses[0] > max(losses[1:]), losses  # the surrogate falls below where it started
    first = metrics[0]
    assert first["mini_batches"] == 2 and first["lr"] == pytest.approx(3e-3)
    assert first["grad_norm"] > 0 and first["entropy"] > 0
    assert gap > 0
    assert metrics[-1]["clip_fraction"] > 0  # the policy moved away from the old log-probs


def test_checkpoint_round_trip_continues_identically(learner_group: LearnerGroup, tmp_path: Path) -> None:
    batch = make_batch(seed=2)
    learner_group.train_step(batch)  # optimizer state is non-trivial before saving
    extra = {"step": 7, "sampler": {"position": 42}, "rng": torch.get_rng_state()}
    learner_group.save(str(tmp_path / "checkpoint"), extra)

    learner_group.train_step(batch)
    continued = learner_group.state_dict()
    learner_group.save(str(tmp_path / "continued"))

    restored_extra = learner_group.load(str(tmp_path / "checkpoint"))
    assert restored_extra["step"] == 7 and restored_extra["sampler"] == {"position": 42}
    assert torch.equal(restored_extra["rng"], extra["rng"])
    learner_group.train_step(batch)
    resumed = learner_group.state_dict()
    learner_group.save(str(tmp_path / "resumed"))

    assert continued.keys() == resumed.keys()
    for name in continued:
        assert torch.equal(continued[name], resumed[name]), name
    assert_same_optimizer_state(tmp_path / "continued", tmp_path / "resumed")


def test_hf_export_loads_with_transformers(learner_group: LearnerGroup, tmp_path: Path) -> None:
    learner_group.export_hf(str(tmp_path / "export"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32)
    learner_state = learner_group.state_dict()
    exported = dict(model.named_parameters())
    assert exported.keys() == learner_state.keys()
    for name, tensor in learner_state.items():
        assert torch.equal(exported[name].detach(), tensor), name
    assert (tmp_path / "export" / "tokenizer.json").is_file()


def assert_same_optimizer_state(first: Path, second: Path) -> None:
    first_files = sorted(p.relative_to(first) for p in first.rglob("*optim_states.pt"))
    assert first_files and first_files == sorted(p.relative_to(second) for p in second.rglob("*optim_states.pt"))
    for relative in first_files:
        a = torch.load(first / relative, map_location="cpu", weights_only=False)
        b = torch.load(second / relative, map_location="cpu", weights_only=False)
        assert_nested_equal(a["optimizer_state_dict"], b["optimizer_state_dict"], str(relative))


def assert_nested_equal(a: object, b: object, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_nested_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_nested_equal(x, y, f"{where}[{index}]")


def vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


ENGINE_KINDS = [
    pytest.param("hf", id="hf"),
    pytest.param(
        "vllm",
        id="vllm",
        marks=[
            pytest.mark.vllm,
            pytest.mark.skipif(not vllm_importable(), reason="vllm is not importable in this venv (runs in .venv-vllm)"),
        ],
    ),
]
VLLM_ACTOR_ENV = {"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}}


@pytest.fixture(scope="module", params=ENGINE_KINDS)
def rollout_group(request: pytest.FixtureRequest, ray_cluster, tiny_model_path: Path):
    from workers.rollout.group import RolloutGroup

    kind = request.param
    engine_kwargs = {"dtype": "float32"} if kind == "hf" else {"dtype": "float32", "max_model_len": 256}
    group = RolloutGroup(
        2, kind, tiny_model_path, engine_kwargs, runtime_env=VLLM_ACTOR_ENV if kind == "vllm" else None
    )
    yield kind, group
    group.shutdown()


def test_weight_sync_reaches_every_rollout_engine(
    learner_group: LearnerGroup, rollout_group, tiny_model_path: Path
) -> None:
    import ray

    from riskpo.messages import Prompt, SamplingParams
    from workers.weight_sync.sync import WeightSync

    kind, rollout_group = rollout_group

    learner_group.train_step(make_batch(seed=3))
    sync = WeightSync(learner_group, rollout_group)
    metrics = sync.sync(learner_group.weight_version)
    after = rollout_group.weight_versions()
    # every engine holds the learner's version of the weights it received: the updates they had
    assert after == [learner_group.weight_version] * len(after) == [sync.version] * len(after)
    assert metrics["sync/weight_version"] == learner_group.weight_version == learner_group.steps
    assert metrics["sync/bytes"] > 0 and metrics["sync/bytes_per_s"] > 0

    learner_state = learner_group.state_dict()
    learner_model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    missing, unexpected = learner_model.load_state_dict(learner_state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embeddings
    prompt_ids = [1, 10, 11, 12, 13]
    expected = learner_model.generate(
        torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=12, min_new_tokens=12
    )[0, len(prompt_ids) :].tolist()
    params = SamplingParams(temperature=0.0, max_new_tokens=12, stop_token_ids=[])
    for actor in rollout_group.actors:
        completion = ray.get(actor.generate.remote([Prompt(token_ids=prompt_ids)], params))[0][0]
        assert completion.token_ids == expected[: len(completion.token_ids)]
        if kind == "hf":  # the engine's module itself is reachable: compare every tensor
            engine_state = ray.get(actor.__ray_call__.remote(
                lambda actor: {n: p.detach().clone() for n, p in actor.engine.model.named_parameters()}
            ))
            for name, tensor in learner_state.items():
                assert torch.equal(engine_state[name], tensor), name
