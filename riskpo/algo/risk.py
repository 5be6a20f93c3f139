"""Risk measures of a score distribution and the RiskPO per-sample advantage weights (docs/algorithm.md
sections 2, 3, 5).

Everything is vectorised tensor code: per-segment statistics (quantiles, means, stds) use one
sort and a few scatter operations, never a Python loop over segments.
"""

from __future__ import annotations

import math

import torch

STD_FLOOR = 1e-6  # algorithm.md section 3: a std below this is treated as 1; otherwise divide by (std + STD_FLOOR)
TRACKER_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05, 0.10, ..., 0.95


# ----------------------------------------------------------------------------- segment statistics


def gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[index] along the first axis (index_select: several times faster than x[idx] on CPU)."""
    return values.index_select(0, index)


def segment_counts(segment_ids: torch.Tensor, num_segments: int,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Number of (unmasked) entries per segment, [num_segments] long."""
    if mask is None:
        return torch.bincount(segment_ids, minlength=num_segments)
    return torch.bincount(segment_ids, weights=mask.to(torch.float64), minlength=num_segments).long()


def segment_sum(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of (unmasked) values per segment, [num_segments]."""
    if mask is not None:
        values = torch.where(mask, values, 0.0)
    return values.new_zeros(num_segments).index_add_(0, segment_ids, values)


def segment_mean(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of (unmasked) values per segment; NaN for an empty segment."""
    counts = segment_counts(segment_ids, num_segments, mask).to(values.dtype)
    return segment_sum(values, segment_ids, num_segments, mask) / counts


def segment_std(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased std of (unmasked) values per segment; NaN where fewer than two entries."""
    counts = segment_counts(segment_ids, num_segments, mask).to(values.dtype)
    means = segment_sum(values, segment_ids, num_segments, mask) / counts.clamp(min=1)
    squared = segment_sum((values - gather(means, segment_ids)) ** 2, segment_ids, num_segments, mask)
    variance = squared / (counts - 1)
    return torch.where(counts >= 2, variance.sqrt(), torch.full_like(variance, math.nan))


def dense_ids(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary integer ids to 0..K-1 in sorted id order: (index [N], K).

    Uses a bincount over the id range when it is compact (no sort), torch.unique otherwise.
    """
    if ids.numel() == 0:
        return torch.zeros(0, dtype=torch.long), 0
    low, high = int(ids.min()), int(ids.max())
    span = high - low + 1
    if span <= 4 * ids.numel() + 1024:
        shifted = ids.long() - low
        present = torch.bincount(shifted, minlength=span) > 0
        remap = torch.cumsum(present, 0) - 1
        return gather(remap, shifted), int(remap[-1]) + 1
    keys, inverse = torch.unique(ids, return_inverse=True)
    return inverse, keys.numel()


def segment_quantiles(
    values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int, levels: torch.Tensor
) -> torch.Tensor:
    """Empirical quantiles per segment with linear interpolation (type 7, torch/numpy default).

    values, segment_ids: [N]; levels: [L] in [0, 1]. Returns [num_segments, L]; NaN rows for
    empty segments. One sort by value, one stable sort by segment, then a gather.
    """
    levels = torch.as_tensor(levels, dtype=torch.float64)
    if ((levels < 0) | (levels > 1)).any():
        raise ValueError(f"quantile levels must lie in [0, 1], got {levels.tolist()}")
    counts = segment_counts(segment_ids, num_segments)
    if values.numel() == 0:
        return values.new_full((num_segments, levels.numel()), math.nan)
    by_value = torch.argsort(values, stable=True)
    order = gather(by_value, torch.argsort(gather(segment_ids, by_value), stable=True))
    sorted_values = gather(values, order)
    starts = torch.cumsum(counts, 0) - counts
    last = (counts - 1).clamp(min=0)
    position = last.to(torch.float64)[:, None] * levels[None, :]  # [S, L]
    lower = position.floor().long()
    upper = torch.minimum(lower + 1, last[:, None])
    weight = (position - lower).to(values.dtype)
    max_index = values.numel() - 1
    low_values = sorted_values[(starts[:, None] + lower).clamp(max=max_index)]
    high_values = sorted_values[(starts[:, None] + upper).clamp(max=max_index)]
    result = torch.lerp(low_values, high_values, weight)
    return torch.where(counts[:, None] > 0, result, torch.full_like(result, math.nan))


def quantile(values: torch.Tensor, level: float) -> torch.Tensor:
    """Empirical u-quantile of a 1-D score vector (linear interpolation); a 0-d tensor."""
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"quantile needs a non-empty 1-D tensor, got shape {tuple(values.shape)}")
    segments = torch.zeros(values.numel(), dtype=torch.long, device=values.device)
    levels = torch.tensor([level], dtype=torch.float64)
    return segment_quantiles(values, segments, 1, levels)[0, 0]


# ----------------------------------------------------------------------------- risk measures


def level_integral(scores: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """(1 / (high - low)) * integral over u in [low, high] of q_u, the empirical quantile
    function (the step function u -> S_(ceil(n u))): the average of the scores over the levels
    between low and high, each sorted score weighted by how much of [(i-1)/n, i/n] lies in
    [low, high]. This is the value whose likelihood-ratio gradient the RiskPO advantage follows."""
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError(f"risk measures need a non-empty 1-D tensor, got shape {tuple(scores.shape)}")
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"levels need 0 <= low < high <= 1, got {low}, {high}")
    ordered = torch.sort(scores.to(torch.float64)).values
    n = ordered.numel()
    edges = torch.arange(n + 1, dtype=torch.float64) / n
    weights = (torch.minimum(edges[1:], torch.tensor(high)) -
               torch.maximum(edges[:-1], torch.tensor(low))).clamp(min=0)
    return (weights * ordered).sum() / (high - low)


def cvar(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """Lower-tail CVaR_a: the mean of the quantile function over levels [0, a] (equal to
    E[S | S <= q_a] when no score is tied across q_a)."""
    return level_integral(scores, 0.0, alpha)


def rvar(scores: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Range VaR_{a:b}: the mean of the quantile function over levels [a, b]. With tied scores
    this differs from E[S | q_a <= S <= q_b]: scores 0,0,0,1,1,1,1,1,2,2 at (0.2, 0.8) give
    0.833 here (what the gradient follows) and 0.625 as a conditional mean."""
    return level_integral(scores, alpha, beta)


def mvar(scores: torch.Tensor, alpha: float, beta: float, w_mix: float) -> torch.Tensor:
    """Mixed VaR (w * CVaR_a + RVaR_{a:b}) / (1 + w): the release form's objective."""
    return (w_mix * cvar(scores, alpha) + rvar(scores, alpha, beta)) / (1.0 + w_mix)


def paper_objective(scores: torch.Tensor, alpha: float, beta: float, w_mix: float) -> torch.Tensor:
    """The paper form's objective, (1 + w) a CVaR_a + (b - a) RVaR_{a:b}: the integral of the
    quantile function weighted 1 + w below a and 1 between a and b (its advantage is
    paper_advantage)."""
    low = (1.0 + w_mix) * alpha * cvar(scores, alpha) if alpha > 0 else scores.new_zeros((), dtype=torch.float64)
    return low + (beta - alpha) * rvar(scores, alpha, beta)


# ----------------------------------------------------------------------------- advantage weights


def g_weight(
    scores: torch.Tensor, q_alpha: torch.Tensor, q_beta: torch.Tensor, natural_baseline: bool = True
) -> torch.Tensor:
    """g(S) = clip(S, qa, qb) - qb (natural baseline, <= 0) or clip(S, qa, qb) - qa (>= 0)."""
    clipped = torch.minimum(torch.maximum(scores, q_alpha), q_beta)
    return clipped - (q_beta if natural_baseline else q_alpha)


def rvar_advantage(
    scores: torch.Tensor,
    q_alpha: torch.Tensor,
    q_beta: torch.Tensor,
    alpha: float,
    beta: float,
    natural_baseline: bool = True,
) -> torch.Tensor:
    """A_rvar(S) = g(S) / (b - a): divided by the width in levels, not by qb - qa."""
    return g_weight(scores, q_alpha, q_beta, natural_baseline) / (beta - alpha)


def cvar_advantage(scores: torch.Tensor, q_alpha: torch.Tensor, alpha: float) -> torch.Tensor:
    """A_cvar(S) = -(qa - S)+ / a (a > 0; the options check refuses a = 0 with mix_cvar)."""
    return -(q_alpha - scores).clamp(min=0) / alpha


def mvar_advantage(
    scores: torch.Tensor,
    q_alpha: torch.Tensor,
    q_beta: torch.Tensor,
    alpha: float,
    beta: float,
    w_mix: float,
    natural_baseline: bool = True,
) -> torch.Tensor:
    """A_mvar(S) = (w * A_cvar + A_rvar) / (1 + w)."""
    risk_range = rvar_advantage(scores, q_alpha, q_beta, alpha, beta, natural_baseline)
    return (w_mix * cvar_advantage(scores, q_alpha, alpha) + risk_range) / (1.0 + w_mix)


def risk_seeking_advantage(
    scores: torch.Tensor,
    q_alpha: torch.Tensor,
    q_beta: torch.Tensor,
    alpha: float,
    beta: float,
    u: float,
    natural_baseline: bool = True,
) -> torch.Tensor:
    """Ablation: A = (u * (S - qb)+ / (1 - b) + A_rvar) / (1 + u); rewards the upper tail."""
    upper_tail = (scores - q_beta).clamp(min=0) / (1.0 - beta)
    risk_range = rvar_advantage(scores, q_alpha, q_beta, alpha, beta, natural_baseline)
    return (u * upper_tail + risk_range) / (1.0 + u)


def paper_advantage(
    scores: torch.Tensor,
    q_alpha: torch.Tensor,
    q_beta: torch.Tensor,
    w_mix: float,
    natural_baseline: bool = True,
    risk_seeking: bool = False,
    risk_seeking_u: float = 1.5,
) -> torch.Tensor:
    """The ICLR paper's advantage: A(S) = -(1 + w) (qa - S)+ + g(S), no division by the levels
    (slope below qa : inside the band = 1 + w : 1). risk_seeking (our analogue for this form):
    A(S) = (1 + u) (S - qb)+ + g(S), the upper tail weighted as the lower one is here."""
    band = g_weight(scores, q_alpha, q_beta, natural_baseline)
    if risk_seeking:
        return (1.0 + risk_seeking_u) * (scores - q_beta).clamp(min=0) + band
    return -(1.0 + w_mix) * (q_alpha - scores).clamp(min=0) + band


ADVANTAGE_FORMS = ("release", "paper")


def risk_advantage(
    scores: torch.Tensor,
    q_alpha: torch.Tensor,
    q_beta: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    w_mix: float = 1.5,
    natural_baseline: bool = True,
    mix_cvar: bool = True,
    risk_seeking: bool = False,
    risk_seeking_u: float = 1.5,
    form: str = "release",
) -> torch.Tensor:
    """The configured per-sample weight. form "paper": paper_advantage; "release": A_mvar
    (mix_cvar), A_rvar, or the risk-seeking ablation, which takes precedence."""
    if form == "paper":
        return paper_advantage(scores, q_alpha, q_beta, w_mix, natural_baseline, risk_seeking,
                               risk_seeking_u)
    if risk_seeking:
        return risk_seeking_advantage(
            scores, q_alpha, q_beta, alpha, beta, risk_seeking_u, natural_baseline
        )
    if mix_cvar:
        return mvar_advantage(scores, q_alpha, q_beta, alpha, beta, w_mix, natural_baseline)
    return rvar_advantage(scores, q_alpha, q_beta, alpha, beta, natural_baseline)


def std_divisor(std: torch.Tensor) -> torch.Tensor:
    """std + 1e-6, or 1 where std is below 1e-6 or undefined (NaN): never divides by ~0."""
    usable = torch.isfinite(std) & (std >= STD_FLOOR)
    return torch.where(usable, std + STD_FLOOR, torch.ones_like(std))


def std_normalize(advantages: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Divide advantages by std_divisor(std) (std broadcast against advantages)."""
    return advantages / std_divisor(std)


# ----------------------------------------------------------------------------- quantile tracker


TRACKER_SCHEDULES = ("constant", "decreasing")
DECREASING_POWER = 0.6  # lr_t = lr * t^-0.6: sum lr_t diverges, sum lr_t^2 converges (Robbins-Monro)


class QuantileTracker:
    """19-level stochastic-approximation quantile tracker over pooled paper scores
    (docs/algorithm.md section 5).

    Each update is one SGD step on the pinball loss, Q_k += lr_t * (u_k - mean_j 1[S_j < Q_k]);
    the first update instead sets Q to the empirical quantiles of that step's scores (warm
    start). lr_t is lr ("constant", the release) or lr * t^-0.6 at the t-th step after the warm
    start ("decreasing", our choice for the paper's unpublished schedule). Levels between grid
    points are read by linear interpolation on the grid; levels outside [0.05, 0.95] are an
    error.
    """

    def __init__(self, lr: float = 0.1, levels: tuple[float, ...] = TRACKER_LEVELS,
                 schedule: str = "constant") -> None:
        if lr <= 0:
            raise ValueError(f"tracker lr must be positive, got {lr}")
        if schedule not in TRACKER_SCHEDULES:
            raise ValueError(f"tracker schedule must be one of {TRACKER_SCHEDULES}, got {schedule!r}")
        self.lr = float(lr)
        self.schedule = schedule
        self.levels = torch.tensor(levels, dtype=torch.float64)
        if self.levels.numel() < 2 or (self.levels.diff() <= 0).any():
            raise ValueError(f"tracker levels must be increasing, at least two: {levels}")
        self.values = torch.full_like(self.levels, math.nan)
        self.initialized = False
        self.num_updates = 0

    def update(self, scores: torch.Tensor) -> None:
        """Warm start on the first call, one stochastic-approximation step afterwards."""
        scores = scores.detach().to(torch.float64).flatten()
        if scores.numel() == 0:
            return
        if not self.initialized:
            self.values = torch.quantile(scores, self.levels)
            self.initialized = True
        else:
            below = (scores[None, :] < self.values[:, None]).to(torch.float64).mean(dim=1)
            self.values = self.values + self.step_size() * (self.levels - below)
        self.num_updates += 1

    def step_size(self) -> float:
        """lr_t of the next stochastic-approximation step (t = num_updates: the warm start
        was update 1, so the first step after it has t = 1)."""
        if self.schedule == "constant":
            return self.lr
        return self.lr * max(self.num_updates, 1) ** -DECREASING_POWER

    def quantile(self, level: float) -> float:
        """Tracked value at `level`, interpolated linearly between grid levels."""
        if not self.initialized:
            raise RuntimeError("QuantileTracker.quantile called before the first update")
        low, high = self.levels[0].item(), self.levels[-1].item()
        if not low - 1e-9 <= level <= high + 1e-9:
            raise ValueError(f"level {level} outside the tracker grid [{low}, {high}]")
        exact = (self.levels - level).abs() < 1e-9
        if exact.any():  # on the grid: read exactly
            return self.values[exact.nonzero()[0, 0]].item()
        upper = int(torch.searchsorted(self.levels, torch.tensor([level], dtype=torch.float64)))
        lower_level, upper_level = self.levels[upper - 1].item(), self.levels[upper].item()
        weight = (level - lower_level) / (upper_level - lower_level)
        return ((1 - weight) * self.values[upper - 1] + weight * self.values[upper]).item()

    def state_dict(self) -> dict[str, object]:
        return {
            "lr": self.lr,
            "schedule": self.schedule,
            "levels": self.levels.clone(),
            "values": self.values.clone(),
            "initialized": self.initialized,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        levels = torch.as_tensor(state["levels"], dtype=torch.float64)
        values = torch.as_tensor(state["values"], dtype=torch.float64)
        if levels.shape != values.shape:
            raise ValueError(f"tracker state: levels {levels.shape} vs values {values.shape}")
        self.lr = float(state["lr"])
        self.schedule = str(state.get("schedule", "constant"))  # checkpoints before schedules
        self.levels = levels.clone()
        self.values = values.clone()
        self.initialized = bool(state["initialized"])
        self.num_updates = int(state["num_updates"])
