"""LoRA in the learner, in process (issue 27): the config checks, where the adapters go, and the
three pitfalls -- dropout breaks the on-policy ratio (and the paper preset's sequence clip then
clips nearly everything), reentrant checkpointing with frozen embeddings starves the adapters of
gradients, an in-place bf16 merge and unmerge drifts the base weights -- each shown, beside the
learner's way that avoids it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer

from launch.config import compose_config, validate
from riskpo.algo.losses import LossConfig, build_policy_loss, policy_objective
from riskpo.models.config import TINY_MODEL, LoraConfig, ModelConfig, TinyModelConfig
from riskpo.models.loading import load_policy
from riskpo.models.lora import check_lora_targets
from riskpo.models.tiny import build_tiny_model
from riskpo.options import ConfigError
from workers.learner.config import LearnerConfig
from workers.learner.lora import ADAPTER, attach_lora, merged_weight, weight_groups
from workers.rollout import ENGINE_CAPABILITIES

PAPER_CLIP = {"ratio": "sequence", "clip_low": 3e-4, "clip_high": 4e-4}  # riskpo_paper's clip


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_lora"))


def lora_policy(path: Path, dropout: float = 0.0, dtype: torch.dtype = torch.float32,
                reentrant: bool | None = None):
    """The tiny policy with rank-4 adapters whose B is random (a trained adapter's, not 0);
    with `reentrant` given, checkpointed that way and without transformers' hook that makes
    the embeddings' output require gradients."""
    model = load_policy(path, dtype)
    model.train()
    if reentrant is not None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.config.use_cache = False
    peft_model = attach_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=dropout))
    if reentrant is not None:  # the hook is registered more than once: clear them all
        peft_model.get_base_model().get_input_embeddings()._forward_hooks.clear()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                weight = module.lora_B[ADAPTER].weight
                weight.copy_(0.05 * torch.randn(weight.shape, generator=generator).to(weight.dtype))
    return peft_model


def tokens(rows: int = 8, length: int = 20) -> torch.Tensor:
    return torch.randint(4, 60, (rows, length), generator=torch.Generator().manual_seed(1))


def logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


# ---------------------------------------------------------------- config

def test_the_lora_options_compose_and_are_checked(tiny_path: Path, monkeypatch) -> None:
    run = validate(compose_config(["model.lora.rank=8", "learner.lora_sync=merged"]))
    assert run.model.adapters == LoraConfig(rank=8)  # alpha, dropout 0 and the targets by default
    assert run.model.adapters.dropout == 0.0
    assert validate(compose_config([])).model.adapters is None  # full fine-tuning by default
    with pytest.raises(ConfigError, match=r"model\.lora\.rank"):
        LoraConfig(rank=0).check("model.lora")
    with pytest.raises(ConfigError, match=r"learner\.lora_sync"):
        LearnerConfig(lora_sync="deltas").check("learner")
    with pytest.raises(ConfigError, match=r"learner\.lora_sync.*model\.lora\.rank is null"):
        validate(compose_config(["learner.lora_sync=adapter"]))
    monkeypatch.setitem(ENGINE_CAPABILITIES["vllm"], "lora_adapters", False)  # an engine without
    with pytest.raises(ConfigError, match=r"learner\.lora_sync.*vllm engine cannot take"):
        validate(compose_config(["model.lora.rank=8", "learner.lora_sync=adapter", "rollout.engine=vllm"]))
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules.*'qkv'.*choose among"):
        check_lora_targets(str(tiny_path), LoraConfig(rank=8, target_modules=["q_proj", "qkv"]))
    assert len(check_lora_targets(str(tiny_path), LoraConfig(rank=8))) == 4 * 7  # 4 layers x 7 Linears
    with pytest.raises(ConfigError, match=r"model\.lora\.rank.*GGUF"):
        ModelConfig(path=str(tiny_path), gguf_file="model.gguf", lora=LoraConfig(rank=8)).check("model")


def test_a_vision_language_policy_gets_adapters_on_its_language_model_only(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "vlm", **TinyModelConfig(arch="llava").build_kwargs())
    peft_model = attach_lora(load_policy(path), LoraConfig(rank=2))
    adapted = [name for name, module in peft_model.named_modules() if isinstance(module, LoraLayer)]
    assert adapted and all(".language_model." in name for name in adapted)
    trainable = [name for name, param in peft_model.named_parameters() if param.requires_grad]
    assert trainable and all("lora_" in name and ".language_model." in name for name in trainable)
    assert TINY_MODEL == "tiny"  # (the tiny VLM is the embedded VL default's policy)


# ---------------------------------------------------------------- pitfalls

def test_dropout_breaks_ratio_one_and_the_paper_clip_then_clips_nearly_everything(tiny_path: Path) -> None:
    """Two forwards of one batch in training mode (the old log-probs pass, then the training
    forward): with lora dropout 0.05 they differ, and the paper preset's sequence-level clip
    [3e-4, 4e-4] clips most tokens of the first, on-policy mini-batch; with dropout 0 the
    ratios are exactly 1 and nothing is clipped."""
    ids = tokens()
    mask = torch.ones(ids.shape[0], ids.shape[1] - 1)
    advantages = torch.tensor([1.0, -1.0] * (ids.shape[0] // 2))
    loss = build_policy_loss(LossConfig(importance_correction="none", **PAPER_CLIP))
    fractions = {}
    for dropout in (0.0, 0.05):
        model = lora_policy(tiny_path, dropout=dropout)
        torch.manual_seed(0)
        with torch.no_grad():
            old = logprobs(model, ids)
        new = logprobs(model, ids)
        _, sums = policy_objective(new, torch.zeros_like(new), mask, advantages, old, loss, loss_units=float(ids.shape[0]))
        fractions[dropout] = sums["clip_fraction"] / sums["tokens"]
    assert fractions[0.0] == 0.0
    assert fractions[0.05] > 0.5, fractions


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_checkpointing_with_frozen_embeddings_and_adapter_gradients(tiny_path: Path, reentrant: bool) -> None:
    """The learner checkpoints non-reentrantly: every adapter gets a gradient, whether or not
    the embeddings' output is made to require one (transformers 5 does that; older versions and
    other wrappers do not). Reentrant checkpointing without it (the pitfall) gives the adapters
    none: with frozen embeddings no checkpointed layer's input needs a gradient."""
    model = lora_policy(tiny_path, reentrant=reentrant)
    objective = logprobs(model, tokens()).sum()
    if reentrant:  # no path from the loss back to any adapter: nothing to train
        assert not objective.requires_grad
        return
    objective.backward()
    grads = [param.grad for name, param in model.named_parameters() if "lora_" in name]
    assert grads and all(grad is not None and grad.abs().sum() > 0 for grad in grads)


def test_the_merge_is_out_of_place_where_an_in_place_bf16_merge_drifts(tiny_path: Path) -> None:
    """PEFT's merge then unmerge of a bf16 layer leaves its base weight changed (the sum and the
    difference each round to bf16); merged_weight leaves it bit-identical and equals the float32
    sum rounded once."""
    model = lora_policy(tiny_path, dtype=torch.bfloat16)
    layer = next(module for module in model.modules() if isinstance(module, LoraLayer))
    base = layer.get_base_layer().weight
    before = base.detach().clone()
    merged = merged_weight(layer, base.data)
    a, b = layer.lora_A[ADAPTER].weight.float(), layer.lora_B[ADAPTER].weight.float()
    assert torch.equal(merged, (before.float() + b @ a * layer.scaling[ADAPTER]).to(torch.bfloat16))
    assert torch.equal(base, before)  # out of place
    layer.merge()
    layer.unmerge()
    assert not torch.equal(base, before)  # the in-place round trip drifted the base weight


def test_the_merged_weights_are_the_adapted_policy_in_hf_names(tiny_path: Path) -> None:
    """weight_groups of a LoRA policy: the base model's names and order, each adapted Linear's
    weight merged; a plain model loaded with them computes what the adapted policy computes.
    Without LoRA layers the groups are the model's own parameters."""
    plain = load_policy(tiny_path)
    names = [name for name, _ in plain.named_parameters()]
    assert [name for group in weight_groups(plain) for name, _ in group.tensors()] == names
    model = lora_policy(tiny_path)
    state = {name: tensor for group in weight_groups(model.get_base_model()) for name, tensor in group.tensors()}
    assert list(state) == names
    plain.load_state_dict(state, strict=False)
    ids = tokens()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, model(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)
