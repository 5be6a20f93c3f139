"""The sampled tokens' log-probs and the policy's entropy, computed from its last hidden states
in chunks of tokens: the vocabulary-wide logits of at most `chunk_tokens` tokens exist at once,
in the forward and, recomputed from the chunk's hidden states (activation checkpointing), in
the backward. The whole micro-batch's logits [B, L, V] are never made: at SmolLM2's 49k-token
vocabulary they were several float32 copies of ~0.7 GB per 3.5k tokens (the logits, their
float32 and temperature-scaled copies, log_softmax, the entropy's softmax, and their
gradients), and on GPUs they are the largest activation of a 1.5B model at a few thousand
tokens. Only the positions asked for (the response tokens) go through the output layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from riskpo.algo.losses import entropy_from_logits
from riskpo.models.vlm import mask_suppressed

# Tokens whose vocabulary-wide logits exist at once (learner.logit_chunk_tokens' default): per
# chunk the output layer's logits in the compute dtype plus a few float32 [chunk, vocabulary]
# buffers (scaled logits; the entropy's shifted logits, softmax and product; in the backward
# the gradients), ~0.1 GB each at 512 x 49,152.
LOGIT_CHUNK_TOKENS = 512


@dataclass
class TokenStats:
    """Per target position of a micro-batch [B, L-1] (aligned with input_ids[:, 1:]), float32,
    0 where not computed: the log-prob of the token that follows, and the entropy of the
    policy's distribution there (at the sampling temperature; None when not asked for)."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None


def token_stats(hidden: torch.Tensor, output_layer: torch.nn.Module, input_ids: torch.Tensor,
                positions: torch.Tensor, temperature: float, suppressed: Sequence[int] = (), *,
                chunk_tokens: int | None = LOGIT_CHUNK_TOKENS, entropy: bool = True,
                entropy_grad: bool = False, recompute: bool = True) -> TokenStats:
    """Log-probs (and entropy) at the target positions [B, L-1] where `positions` is True, from
    the last hidden states [B, L, H] and the output layer mapping them to logits; suppressed
    token ids get probability 0 (riskpo/models/vlm.py). The entropy carries a gradient only
    with entropy_grad (an entropy bonus); else it is a detached metric. Under autograd each
    chunk is checkpointed: its logits are recomputed in the backward, not kept (recompute
    False: kept, where the output layer cannot run again in the backward -- a frozen output
    layer under ZeRO-3, which does not gather it again there).

    chunk_tokens None: one chunk, however many positions (where each call of the output layer
    is a collective every rank must make equally often: ZeRO-3 gathers its weight per call).
    With no position at all the output layer still runs once, on the first target, and the
    result depends on it with weight 0: every parameter takes part in every forward and
    backward (ZeRO's per-micro-batch collectives)."""
    anchor = None
    if not positions.any():
        positions, anchor = torch.zeros_like(positions), positions
        positions[0, 0] = True
    targets = input_ids[:, 1:][positions]  # [N]
    states = hidden[:, :-1][positions]  # [N, H]
    size = chunk_tokens or targets.numel()
    logprob_chunks, entropy_chunks = [], []
    for start in range(0, targets.numel(), size):
        arguments = (states[start:start + size], targets[start:start + size],
                     output_layer, temperature, tuple(suppressed), entropy, entropy_grad)
        if recompute and torch.is_grad_enabled() and states.requires_grad:
            chunk_logprobs, chunk_entropy = checkpoint(_chunk_stats, *arguments, use_reentrant=False)
        else:
            chunk_logprobs, chunk_entropy = _chunk_stats(*arguments)
        logprob_chunks.append(chunk_logprobs)
        entropy_chunks.append(chunk_entropy)
    logprobs = _scatter(logprob_chunks, positions)
    entropies = _scatter(entropy_chunks, positions) if entropy else None
    if anchor is not None:  # nothing asked: zeros that still hang on the output layer
        logprobs = logprobs * anchor
        entropies = None if entropies is None else entropies * anchor
    return TokenStats(logprobs, entropies)


def _scatter(chunks: list[torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    """The chunks' values, in order, at the True entries of positions of a zero [B, L-1]."""
    zeros = torch.zeros(positions.shape, dtype=torch.float32, device=positions.device)
    return zeros.masked_scatter(positions, torch.cat(chunks))


def _chunk_stats(states: torch.Tensor, targets: torch.Tensor, output_layer: torch.nn.Module,
                 temperature: float, suppressed: tuple[int, ...], with_entropy: bool,
                 entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk's log-probs [n] and entropy [n] (zeros when not asked for), float32."""
    logits = mask_suppressed(output_layer(states), suppressed)
    scaled = logits.float() / temperature  # [n, V]
    normaliser = torch.logsumexp(scaled, dim=-1)
    logprobs = scaled.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normaliser
    if not with_entropy:
        return logprobs, torch.zeros_like(logprobs)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = entropy_from_logits(scaled)  # the full-logit path's, on the chunk
    return logprobs, entropy if entropy_grad else entropy.detach()
