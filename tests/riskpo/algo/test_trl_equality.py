"""Our GRPO loss and its gradient equal TRL's (trl 1.16, pinned in the dev extra) on identical
inputs: TRL's own code path (GRPOTrainer._compute_loss, with its fused LM head) against the
learner's (the final hidden states, log-probs and entropy in chunks of tokens by
workers/learner/logits.py token_stats, riskpo.algo.losses.policy_objective), on a tiny model,
for each TRL loss type that maps onto one of our aggregations, at token and sequence ratio
level, with the PPO clip active and the dual clip off (TRL's delta=None).
bench/trl_side_by_side.py compares the two trainers' speed, memory and rewards on the SmolLM2
pilot."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from riskpo.algo.losses import LossConfig, build_policy_loss, policy_objective
from riskpo.models.loading import load_model_and_tokenizer
from riskpo.models.tiny import build_tiny_model
from workers.learner.logits import token_stats

TEMPERATURE = 0.7
CLIP = 0.2
PROMPT, COMPLETION = 5, 6  # tokens; TRL left-pads prompts, so all have the same length here
COMPLETION_LENGTHS = [6, 3, 5, 1]
ADVANTAGES = [1.0, -0.5, 0.8, -1.2]
# TRL's loss_type -> our algorithm.loss.aggregation: grpo averages each response's tokens then
# the responses; bnpo and dapo average all the batch's tokens (dapo over the whole generation
# batch: the same here, one micro-batch)
LOSS_TYPES = {"grpo": "seq_mean_token_mean", "bnpo": "token_mean", "dapo": "token_mean"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_trl"), arch="llama", seed=0))


def trl_trainer(model: torch.nn.Module, tokenizer, loss_type: str, level: str, output_dir) -> GRPOTrainer:
    """TRL's trainer around the model, fp32 (bf16=False: TRL turns bf16 on by default where the
    CPU has it), no KL, no entropy bonus, its clip at CLIP both sides."""
    args = GRPOConfig(output_dir=str(output_dir), loss_type=loss_type, importance_sampling_level=level,
                      epsilon=CLIP, beta=0.0, temperature=TEMPERATURE, per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=COMPLETION, use_cpu=True, bf16=False,
                      report_to=[])
    trainer = GRPOTrainer(model=model, args=args, processing_class=tokenizer,
                          reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                          train_dataset=Dataset.from_dict({"prompt": ["1+1="] * 4}))
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train: one micro-batch
    return trainer


def batch(model: torch.nn.Module, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Prompts, right-padded completions, advantages, and old log-probs shifted from the
    model's per response (plus noise per token) so that at both ratio levels the clip binds
    on the first and last response (ratio past 1 +- CLIP on their advantage's side) and not
    on the others."""
    generator = torch.Generator().manual_seed(0)
    rows = len(COMPLETION_LENGTHS)
    prompt_ids = torch.randint(3, 20, (rows, PROMPT), generator=generator)
    completion_mask = (torch.arange(COMPLETION)[None] < torch.tensor(COMPLETION_LENGTHS)[:, None]).long()
    completion_ids = torch.randint(3, 20, (rows, COMPLETION), generator=generator)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, pad_token_id)
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attention_mask = torch.cat([torch.ones_like(prompt_ids), completion_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, PROMPT - 1:-1]
        current = torch.log_softmax(logits.float() / TEMPERATURE, -1).gather(-1, completion_ids[..., None])[..., 0]
    shift = torch.tensor([-0.5, 0.1, -0.05, 0.5])[:, None] + 0.3 * torch.randn(rows, COMPLETION, generator=generator)
    return {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids),
            "completion_ids": completion_ids, "completion_mask": completion_mask,
            "advantages": torch.tensor(ADVANTAGES), "old_per_token_logps": (current + shift) * completion_mask,
            "num_items_in_batch": completion_mask.sum()}


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    found = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    model.zero_grad()
    return found


def ours(model: torch.nn.Module, inputs: dict[str, torch.Tensor], aggregation: str,
         level: str) -> tuple[torch.Tensor, dict[str, float]]:
    """Our objective on the same rows, as the learner computes it (workers/learner: the final
    hidden states with logits_to_keep=1, the output layer on the response positions in
    chunks): targets input_ids[:, 1:], the completion's aligned at PROMPT - 1; normalised by
    the aggregation's units over the batch (one micro-batch)."""
    loss = build_policy_loss(LossConfig(aggregation=aggregation, ratio=level, dual_clip=None,
                                        clip_low=CLIP, clip_high=CLIP, importance_correction="none"))
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    rows, targets = input_ids.shape[0], input_ids.shape[1] - 1
    response_mask = torch.zeros(rows, targets, dtype=torch.bool)
    response_mask[:, PROMPT - 1:] = inputs["completion_mask"].bool()
    old = torch.zeros(rows, targets)
    old[:, PROMPT - 1:] = inputs["old_per_token_logps"]
    units = loss.aggregation.units(inputs["completion_mask"].sum(1).tolist(), None)
    output = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                   output_hidden_states=True, logits_to_keep=1)
    stats = token_stats(output.hidden_states[-1], model.get_output_embeddings(), input_ids,
                        response_mask, TEMPERATURE, chunk_tokens=4)  # several chunks
    return policy_objective(stats.logprobs, stats.entropy, response_mask, inputs["advantages"], old,
                            loss, loss_units=units)


# each case builds a GRPOTrainer (~5 s): the fast lane keeps one per level, CI runs them all
FAST_CASES = {("grpo", "token"), ("dapo", "sequence")}


@pytest.mark.parametrize(("loss_type", "level"), [
    pytest.param(loss_type, level, marks=() if (loss_type, level) in FAST_CASES else pytest.mark.slow)
    for loss_type in sorted(LOSS_TYPES) for level in ("token", "sequence")])
def test_our_grpo_loss_and_gradient_equal_trls(model_path: str, tmp_path, loss_type: str, level: str) -> None:
    model, tokenizer = load_model_and_tokenizer(model_path)
    model.train()
    trainer = trl_trainer(model, tokenizer, loss_type, level, tmp_path)
    inputs = batch(model, tokenizer.pad_token_id)
    theirs = trainer._compute_loss(trainer.model, inputs)
    theirs.backward()
    their_gradients = gradients(model)
    objective, sums = ours(model, inputs, LOSS_TYPES[loss_type], level)
    objective.backward()
    our_gradients = gradients(model)
    assert 0.2 < sums["clip_fraction"] / sums["tokens"] < 0.8  # the clip binds on some tokens
    assert objective.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    assert our_gradients.keys() == their_gradients.keys() and len(our_gradients) > 10
    assert sum(gradient.norm() for gradient in their_gradients.values()) > 0.1
    for name, gradient in their_gradients.items():
        torch.testing.assert_close(our_gradients[name], gradient, rtol=1e-4, atol=1e-6, msg=name)
