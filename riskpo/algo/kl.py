"""The KL penalty to a frozen reference policy (`algorithm.loss.kl_coef`, `kl_kind`;
docs/algorithm.md section 7): per-token estimators from the log-probs of the sampled tokens
(kl_penalty says what each estimates, in value and in gradient), weighted off the policy by
pi / pi_old (kl_term). The default kind is k2, the one whose gradient is that of the documented
penalty KL(pi || ref).
"""

from __future__ import annotations

import torch

from riskpo.algo.ppo import LOG_RATIO_CLAMP

KL_KINDS = {"k1": "k1", "kl": "k1", "k2": "k2", "mse": "k2", "k3": "k3", "low_var_kl": "k3"}
DEFAULT_KL_KIND = "k2"
K3_CLAMP = 10.0  # k3's value clamped to [-10, 10], as verl does


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = DEFAULT_KL_KIND) -> torch.Tensor:
    """The per-token estimate [B, T] of the penalty from the sampled tokens' log-probs under the
    policy and the reference.

    With d = log pi(y) - log ref(y) for a sampled token y ~ pi, expectations over y ~ pi and
    gradients taken by autograd with the sample held fixed (grad d = grad log pi):

        kind               value             E[value]                  E[gradient]
        k1 ("kl")          d                 KL(pi || ref)             0 (E[grad log pi] = 0)
        k2 ("mse")         d^2 / 2           ~ KL(pi || ref), biased   grad KL(pi || ref)
        k3 ("low_var_kl")  exp(-d) + d - 1   KL(pi || ref), >= 0       grad KL(ref || pi)

    k2: grad = d grad log pi, and E_pi[d grad log pi] = sum_y grad pi(y) (log pi(y) - log ref(y))
    = grad KL(pi || ref). k3: grad = (1 - ref/pi) grad log pi, whose mean sum_y (pi - ref) grad
    log pi = -sum_y ref grad log pi is the gradient of KL(ref || pi), the other (mass-covering)
    direction, although its value estimates KL(pi || ref). k1's gradient is noise around 0.
    k3's log ratio is clamped to [-20, 20] and its value to [-10, 10], as verl does.
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
    weighted by the detached ratio pi / pi_old. On a later mini-batch (or PPO epoch) the tokens
    come from pi_old, the policy before this step's updates, and E_pi_old[sg(pi/pi_old) grad k]
    = E_pi[grad k], so kl_penalty's table holds for the policy being trained; the weight is
    exactly 1 on the first mini-batch."""
    ratio = torch.exp((logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).detach()
    return ratio * kl_penalty(logprobs, ref_logprobs, kind)
