"""The KL penalty to a frozen reference policy (`algorithm.loss.kl_coef`, `kl_kind`;
docs/algorithm.md section 7): per-token estimators from the log-probs of the sampled tokens, and
what each one's value and gradient estimate.

With d = log pi(y) - log ref(y) for a sampled token y ~ pi, expectations over y ~ pi and
gradients taken by autograd with the sample held fixed (grad d = grad log pi):

    kind                value              E[value]                E[gradient]
    k1 ("kl")           d                  KL(pi || ref)           0: E[grad log pi] = 0, noise only
    k2 ("mse")          d^2 / 2            ~ KL(pi || ref) (biased) grad KL(pi || ref)
    k3 ("low_var_kl")   exp(-d) + d - 1    KL(pi || ref), >= 0     grad KL(ref || pi)

k2: grad = d grad log pi, and E_pi[d grad log pi] = sum_y grad pi(y) (log pi(y) - log ref(y)) =
grad KL(pi || ref). k3: grad = (1 - ref/pi) grad log pi, whose mean sum_y (pi - ref) grad log pi =
-sum_y ref grad log pi is the gradient of KL(ref || pi), the other direction (mass-covering),
although its value estimates KL(pi || ref). k1's gradient has mean 0. The default is k2, the one
whose gradient is that of the documented penalty KL(pi || ref).

Off the policy: on a later mini-batch (or PPO epoch) the tokens were sampled by pi_old, the policy
before this step's updates, so kl_term weights every estimator by the detached ratio
pi / pi_old (exactly 1 on the first mini-batch); E_{pi_old}[sg(pi/pi_old) grad k] = E_pi[grad k],
so the table holds for the policy being trained.
"""

from __future__ import annotations

import torch

KL_KINDS = {"k1": "k1", "kl": "k1", "k2": "k2", "mse": "k2", "k3": "k3", "low_var_kl": "k3"}
DEFAULT_KL_KIND = "k2"
LOG_RATIO_CLAMP = 20.0  # exp() arguments clamped to [-20, 20], as verl does
K3_CLAMP = 10.0  # k3's value clamped to [-10, 10], as verl does


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = DEFAULT_KL_KIND) -> torch.Tensor:
    """The per-token estimate [B, T] of the penalty from the sampled tokens' log-probs under the
    policy and the reference (the module docstring says what its value and gradient estimate).

    k1 ("kl"): log p - log r. k2 ("mse"): (log p - log r)^2 / 2. k3 ("low_var_kl"):
    exp(log r - log p) - (log r - log p) - 1 with the log ratio clamped to [-20, 20] and the
    result to [-10, 10], as verl does.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"KL kind must be one of {sorted(KL_KINDS)}, got {kind!r}")
    log_ratio = logprobs - ref_logprobs
    estimator = KL_KINDS[kind]
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    reverse = (-log_ratio).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (torch.exp(reverse) - reverse - 1.0).clamp(-K3_CLAMP, K3_CLAMP)


def kl_term(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, old_logprobs: torch.Tensor,
            kind: str = DEFAULT_KL_KIND) -> torch.Tensor:
    """The penalty's per-token loss [B, T] on tokens sampled by the old policy: kl_penalty
    weighted by the detached ratio pi / pi_old, so that its expected value and gradient are
    those of kind under the current policy (the module docstring)."""
    ratio = torch.exp((logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).detach()
    return ratio * kl_penalty(logprobs, ref_logprobs, kind)
