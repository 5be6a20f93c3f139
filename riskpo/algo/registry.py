"""Advantage estimators by name: RiskPO and the baselines GRPO, Dr.GRPO, RLOO and REINFORCE with
a batch baseline (docs/algorithm.md sections 3-5, 8), and their options (`algorithm.*`).
Adding an estimator is one decorated function in this file.

Every estimator has the signature
    estimator(rewards[N], question_ids[N], bundle_ids[N] | None, config, state, valid=None)
        -> AdvantageResult(advantages[N], metrics)
Grouping belongs to the estimator: the group baselines group responses by question; RiskPO
cuts consecutive questions (in order of first appearance) into bundles of config.bundle_size,
unless bundle_ids are given. Rows with valid False (infrastructure failures) get advantage 0
and enter no statistic; a non-finite reward in a valid row is an error naming the row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from riskpo.algo import baselines, risk
from riskpo.algo.bundles import CREDITS, PAIRINGS, consecutive_bundles
from riskpo.algo.metrics import advantage_statistics
from riskpo.algo.risk import (
    ADVANTAGE_FORMS,
    TRACKER_LEVELS,
    TRACKER_SCHEDULES,
    QuantileTracker,
    dense_ids,
    gather,
    segment_counts,
)
from riskpo.algo.riskpo import riskpo_estimate, riskpo_step
from riskpo.options import ConfigError, join, one_of, require

QUANTILE_SOURCES = ("tracked", "bundle", "mix")
TRACKER_UPDATES = ("before_advantage", "after_advantage")
GROUP_EPSILON = 1e-6  # GRPO divides by (group std + this)


@dataclass
class WReinforceConfig:
    """W-REINFORCE (Zhu et al. 2025, arXiv 2506.01347): +positive_weight for a right answer,
    -1 for a wrong one."""

    positive_weight: float = 0.1  # lambda

    def check(self, key: str) -> None:
        require(self.positive_weight >= 0.0, f"{key}.positive_weight", "must be >= 0")


@dataclass
class PKPOConfig:
    """PKPO (Walder and Karkhanis 2025, arXiv 2505.15201): unbiased pass@k rewards, k annealed
    linearly from k to k_end over anneal_steps steps starting at anneal_start (0: a switch)."""

    k: int = 4
    k_end: int | None = None  # null: k throughout
    anneal_start: int = 0
    anneal_steps: int = 0
    baseline: str = "loo_minus_one"  # see baselines.PKPO_BASELINES

    def check(self, key: str) -> None:
        require(self.k >= 1, f"{key}.k", "must be >= 1")
        require(self.k_end is None or self.k_end >= 1, f"{key}.k_end", "must be >= 1 or null")
        require(self.anneal_start >= 0 and self.anneal_steps >= 0, f"{key}.anneal_steps",
                "anneal_start and anneal_steps must be >= 0")
        one_of(self.baseline, baselines.PKPO_BASELINES, f"{key}.baseline")

    def k_at(self, step: int) -> int:
        """k at a (0-based) training step."""
        return baselines.pkpo_k_schedule(step, k_start=self.k, k_end=self.k_end or self.k,
                                         anneal_start=self.anneal_start,
                                         anneal_steps=self.anneal_steps)


@dataclass
class RSGRPOConfig:
    """RS-GRPO (arXiv 2509.24261): A = (exp(beta r) / mean_group exp(beta r) - 1) / beta."""

    beta: float = 2.0

    def check(self, key: str) -> None:
        require(self.beta > 0.0, f"{key}.beta", "must be > 0 (risk-seeking utility)")


@dataclass
class AdvantageConfig:
    """The estimators' options (`algorithm.*`); each estimator reads the fields it needs and
    checks them (check(key, name)).

    RiskPO: alpha, beta, w_mix, natural_baseline, mix_cvar, risk_seeking(_u), std_normalize,
    credit, pairing ("permute": a seeded random order per question, or "index" = the release's
    order), bundle_size (with drop_last_bundle / ragged_last_bundle when the prompts of a step
    do not split into bundles), allow_surplus_responses, quantile_source, tracker_lr,
    tracker_update (when the tracker takes step t's scores: "before_advantage" = step t's
    advantage uses the tracker after its step-t update, the paper; "after_advantage" = it uses
    the state after step t-1).
    GRPO / REINFORCE: std_normalize (GRPO divides by group std + epsilon). Dr.GRPO, RLOO: none.
    """

    # --- riskpo: risk measure (docs/algorithm.md sections 2-3)
    alpha: float = 0.2  # lower quantile level a
    beta: float = 0.8  # upper quantile level b
    w_mix: float = 1.5  # weight of CVaR_a in MVaR
    natural_baseline: bool = True
    mix_cvar: bool = True  # false: pure RVaR
    risk_seeking: bool = False  # ablation: rewards the upper tail
    risk_seeking_u: float = 1.5
    std_normalize: bool = True  # riskpo: by the std of the scores; grpo: group std
    advantage_form: str = "release"  # see risk.ADVANTAGE_FORMS: the release's or the ICLR paper's
    # --- riskpo: bundles and credit (docs/algorithm.md section 4)
    credit: str = "uniform"  # see bundles.CREDITS
    pairing: str = "permute"  # see bundles.PAIRINGS
    bundle_size: int = 5
    drop_last_bundle: bool = False  # prompts % bundle_size != 0: drop the short last bundle ...
    ragged_last_bundle: bool = False  # ... or keep it smaller
    allow_surplus_responses: bool = False  # unequal n per question within a bundle
    # --- riskpo: quantiles (docs/algorithm.md section 5)
    quantile_source: str = "tracked"  # see QUANTILE_SOURCES
    tracker_lr: float = 0.1
    tracker_schedule: str = "constant"  # see risk.TRACKER_SCHEDULES
    tracker_update: str = "before_advantage"  # see TRACKER_UPDATES
    # --- the objectives RiskPO is compared with (docs/algorithm.md section 8)
    w_reinforce: WReinforceConfig = field(default_factory=WReinforceConfig)
    pkpo: PKPOConfig = field(default_factory=PKPOConfig)
    rs_grpo: RSGRPOConfig = field(default_factory=RSGRPOConfig)

    def check(self, key: str, name: str = "riskpo") -> None:
        """The options estimator `name` reads, under `key` ("algorithm")."""
        if name in ("w_reinforce", "pkpo", "rs_grpo"):
            getattr(self, name).check(join(key, name))
        if name != "riskpo":
            return  # the group baselines read std_normalize only, a bool
        require(0.0 <= self.alpha < self.beta <= 1.0, f"{key}.alpha",
                f"alpha={self.alpha}, beta={self.beta}: need 0 <= alpha < beta <= 1",
                f"e.g. {key}.alpha=0.2 {key}.beta=0.8")
        one_of(self.advantage_form, ADVANTAGE_FORMS, f"{key}.advantage_form")
        one_of(self.tracker_schedule, TRACKER_SCHEDULES, f"{key}.tracker_schedule")
        if self.mix_cvar and not self.risk_seeking and self.advantage_form == "release":
            require(self.alpha > 0.0, f"{key}.alpha", "CVaR_alpha divides by alpha, which is 0",
                    f"use alpha > 0 or {key}.mix_cvar=false")
        require(self.w_mix >= 0.0, f"{key}.w_mix", f"{self.w_mix} is negative", "use w_mix >= 0")
        if self.risk_seeking and self.advantage_form == "release":
            require(self.beta < 1.0, f"{key}.beta", "risk_seeking divides by 1 - beta, which is 0",
                    "use beta < 1")
            require(self.risk_seeking_u >= 0.0, f"{key}.risk_seeking_u", "must be >= 0")
        one_of(self.credit, CREDITS, f"{key}.credit")
        one_of(self.pairing, PAIRINGS, f"{key}.pairing")
        one_of(self.quantile_source, QUANTILE_SOURCES, f"{key}.quantile_source")
        one_of(self.tracker_update, TRACKER_UPDATES, f"{key}.tracker_update")
        require(0.0 < self.tracker_lr <= 1.0, f"{key}.tracker_lr", f"{self.tracker_lr} outside (0, 1]")
        if self.quantile_source != "bundle":
            low, high = TRACKER_LEVELS[0], TRACKER_LEVELS[-1]
            for level_key, level in (("alpha", self.alpha), ("beta", self.beta)):
                require(low - 1e-9 <= level <= high + 1e-9, f"{key}.{level_key}",
                        f"{level} lies outside the quantile tracker's grid [{low}, {high}]",
                        f"use a level in [{low}, {high}] or {key}.quantile_source=bundle")
        require(self.bundle_size >= 1, f"{key}.bundle_size", "must be >= 1")
        require(not (self.drop_last_bundle and self.ragged_last_bundle), f"{key}.drop_last_bundle",
                "drop_last_bundle and ragged_last_bundle are both true", "choose one")


@dataclass
class AdvantageState:
    """What an estimator carries from step to step (part of every checkpoint): the step count,
    the seed of the pairing permutations and the quantile tracker."""

    quantile_tracker: QuantileTracker | None = None
    step: int = 0
    seed: int = 0

    def tracker(self, lr: float, schedule: str = "constant") -> QuantileTracker:
        """The quantile tracker, created on first use; the config's lr and schedule always win
        (the number of updates, which the decreasing schedule counts, is the tracker's state)."""
        if self.quantile_tracker is None:
            self.quantile_tracker = QuantileTracker(lr=lr, schedule=schedule)
        self.quantile_tracker.lr, self.quantile_tracker.schedule = float(lr), schedule
        return self.quantile_tracker

    def state_dict(self) -> dict[str, object]:
        tracker = self.quantile_tracker.state_dict() if self.quantile_tracker else None
        return {"step": self.step, "quantile_tracker": tracker}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.step = int(state["step"])
        tracker_state = state["quantile_tracker"]
        if tracker_state is None:
            self.quantile_tracker = None
        else:
            self.quantile_tracker = QuantileTracker()
            self.quantile_tracker.load_state_dict(tracker_state)


@dataclass
class AdvantageResult:
    advantages: torch.Tensor  # [N], 0 on masked rows
    metrics: dict[str, float] = field(default_factory=dict)
    # [N] per-response weights of the loss when the estimator defines them (RiskPO: the mean
    # over papers of the mean over each paper's responses; algorithm.loss.aggregation=paper_mean)
    loss_weights: torch.Tensor | None = None


EstimatorFn = Callable[..., AdvantageResult]


@dataclass(frozen=True)
class Estimator:
    """A registered estimator. groups: how it groups responses -- "question" (group
    baselines: needs n >= 2 samples per prompt), "bundle" (RiskPO: consecutive questions in
    bundles of config.bundle_size), "batch" (one baseline for the whole step) or "none" (each
    response on its own: NSR, W-REINFORCE)."""

    name: str
    fn: EstimatorFn
    groups: str

    def prompts_per_group(self, config: AdvantageConfig) -> int:
        """How many consecutive prompts form one of its groups (the sampler keeps them whole)."""
        return config.bundle_size if self.groups == "bundle" else 1

    def __call__(self, rewards: torch.Tensor, question_ids: torch.Tensor,
                 bundle_ids: torch.Tensor | None = None, config: AdvantageConfig | None = None,
                 state: AdvantageState | None = None,
                 valid: torch.Tensor | None = None) -> AdvantageResult:
        config = config or AdvantageConfig()
        state = state if state is not None else AdvantageState()
        valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.bool()
        _check_rewards(rewards, question_ids, valid)
        if bundle_ids is None:
            bundle_ids = (consecutive_bundles(question_ids, config.bundle_size)
                          if self.groups == "bundle" else question_ids)
        result = self.fn(rewards, question_ids, bundle_ids, config, state, valid)
        advantages = torch.where(valid, result.advantages, 0.0).to(_float_dtype(rewards))
        metrics = {**result.metrics,
                   **advantage_statistics(advantages, rewards, question_ids, valid)}
        state.step += 1
        return AdvantageResult(advantages, metrics, result.loss_weights)


ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {}
GROUPINGS = ("question", "bundle", "batch", "none")


def register_advantage(name: str, groups: str = "question") -> Callable[[EstimatorFn], Estimator]:
    """Register `fn(rewards, question_ids, bundle_ids, config, state, valid)` under `name`."""
    if groups not in GROUPINGS:
        raise ValueError(f"estimator {name!r}: groups must be one of {GROUPINGS}, got {groups!r}")

    def decorate(fn: EstimatorFn) -> Estimator:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} registered twice")
        ADVANTAGE_ESTIMATORS[name] = Estimator(name, fn, groups)
        return ADVANTAGE_ESTIMATORS[name]

    return decorate


def get_advantage_estimator(name: str) -> Estimator:
    """The estimator registered under `name`."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ConfigError("algorithm.name", f"{name!r} is not a known advantage estimator",
                          f"use one of {', '.join(sorted(ADVANTAGE_ESTIMATORS))}")
    return ADVANTAGE_ESTIMATORS[name]


def _check_rewards(rewards: torch.Tensor, question_ids: torch.Tensor, valid: torch.Tensor) -> None:
    """Shapes agree and every valid reward is finite (one rule for every estimator)."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    for name, tensor in (("question_ids", question_ids), ("valid", valid)):
        if tensor.shape != rewards.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, rewards {tuple(rewards.shape)}")
    bad = valid & ~torch.isfinite(rewards)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"reward of row {row} (question id {question_ids[row].item()}) is "
                         f"{rewards[row].item()}: a valid row needs a finite reward (mark "
                         "infrastructure failures invalid instead)")


def _float_dtype(rewards: torch.Tensor) -> torch.dtype:
    return rewards.dtype if rewards.dtype.is_floating_point else torch.float32


# ----------------------------------------------------------------------------- RiskPO


def riskpo_advantages(
    rewards: torch.Tensor,
    question_ids: torch.Tensor,
    bundle_ids: torch.Tensor,
    alpha: float = 0.2,
    beta: float = 0.8,
    w_mix: float = 1.5,
    natural_baseline: bool = True,
    mix_cvar: bool = True,
    std_normalize: bool = True,
    credit: str = "uniform",
    quantiles: tuple[float, float] | None = None,
    advantage_form: str = "release",
) -> torch.Tensor:
    """Stable entry point: RiskPO advantages [N], pairing "index".

    quantiles None: per-bundle empirical quantiles of the paper scores; (qa, qb): these, as
    tracked values arrive (std_normalize then divides by the spread of all the papers given).
    """
    config = AdvantageConfig(alpha=alpha, beta=beta, w_mix=w_mix, natural_baseline=natural_baseline,
                             mix_cvar=mix_cvar, std_normalize=std_normalize, credit=credit,
                             pairing="index", quantile_source="bundle", advantage_form=advantage_form)
    config.check("riskpo_advantages")
    step = riskpo_step(rewards, question_ids, bundle_ids, config, quantiles=quantiles)
    return step.advantages.to(_float_dtype(rewards))


@register_advantage("riskpo", groups="bundle")
def _riskpo_estimator(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
                      config: AdvantageConfig, state: AdvantageState,
                      valid: torch.Tensor) -> AdvantageResult:
    """RiskPO: bundles, papers, risk weights against tracked / per-bundle / mixed quantiles."""
    generator = None
    if config.pairing == "permute":
        generator = torch.Generator().manual_seed(state.seed * 1_000_003 + state.step)
    tracker = state.tracker(config.tracker_lr, config.tracker_schedule)
    step, metrics = riskpo_estimate(rewards, question_ids, bundle_ids, config, tracker, valid,
                                    generator)
    return AdvantageResult(step.advantages, metrics, step.loss_weights)


# ----------------------------------------------------------------------------- group baselines


@dataclass(frozen=True)
class _Groups:
    question: torch.Tensor  # [N] question index of each row
    valid_counts: torch.Tensor  # [Q]
    mean: torch.Tensor  # [Q] mean of valid rewards (NaN if none)
    std: torch.Tensor  # [Q] unbiased std of valid rewards (NaN if < 2)


def _groups(rewards: torch.Tensor, question_ids: torch.Tensor, valid: torch.Tensor) -> _Groups:
    """Per-question count, mean and unbiased std of the valid rewards. Rows laid out as the
    trainer lays them out (question 0's n responses, then question 1's, ...) are reduced as a
    [Q, n] table; any other order by two scatters (counts with sums, then squared deviations)."""
    values = torch.where(valid, rewards.to(torch.float64), 0.0)
    table = _question_table(question_ids)
    if table is not None:
        question = table
        shape = (-1, int(question_ids.numel() // max(int(question[-1]) + 1, 1)))
        weights, grid = valid.to(torch.float64).view(shape), values.view(shape)
        valid_counts = weights.sum(1)
        mean = grid.sum(1) / valid_counts
        squares = ((grid - mean[:, None]) * weights).square().sum(1)
    else:
        question, num_questions = dense_ids(question_ids)
        counts = segment_counts(question, num_questions)
        if (counts < 2).any():
            culprit = question_ids[(counts[question] < 2).nonzero()[0, 0]].item()
            raise ValueError(f"question id {culprit} has a single response; group baselines need n >= 2")
        sums = torch.zeros(num_questions, 2, dtype=torch.float64).index_add_(
            0, question, torch.stack((valid.to(torch.float64), values), dim=1))
        valid_counts, mean = sums[:, 0], sums[:, 1] / sums[:, 0]
        deviations = torch.where(valid, values - gather(mean, question), 0.0)
        squares = torch.zeros(num_questions, dtype=torch.float64).index_add_(0, question, deviations.square())
    std = torch.where(valid_counts >= 2, (squares / (valid_counts - 1)).sqrt(), torch.nan)
    return _Groups(question, valid_counts.long(), mean, std)


def _question_table(question_ids: torch.Tensor) -> torch.Tensor | None:
    """question_ids itself when it is 0, 0, ..., 1, 1, ... with n >= 2 rows per question (the
    trainer's layout), else None."""
    total = question_ids.numel()
    if total < 2 or question_ids.dtype.is_floating_point:
        return None
    num_questions = int(question_ids[-1]) + 1
    if num_questions < 1 or total % num_questions or total // num_questions < 2:
        return None
    expected = torch.arange(num_questions).repeat_interleave(total // num_questions)
    return question_ids if torch.equal(question_ids, expected) else None


def _centered(rewards: torch.Tensor, groups: _Groups) -> tuple[torch.Tensor, torch.Tensor]:
    """r - group mean, and whether the row's group has >= 2 valid responses (else advantage 0)."""
    has_baseline = gather(groups.valid_counts, groups.question) >= 2
    centered = rewards.to(torch.float64) - gather(groups.mean, groups.question)
    return torch.where(has_baseline, centered, 0.0), has_baseline


@register_advantage("grpo")
def _grpo(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
          config: AdvantageConfig, state: AdvantageState, valid: torch.Tensor) -> AdvantageResult:
    """GRPO: (r - group mean) / (group std + epsilon); questions with < 2 valid responses get 0."""
    groups = _groups(rewards, question_ids, valid)
    centered, has_baseline = _centered(rewards, groups)
    if config.std_normalize:
        std = torch.where(has_baseline, gather(groups.std, groups.question), 1.0)
        centered = centered / (std + GROUP_EPSILON)
    return AdvantageResult(centered)


@register_advantage("dr_grpo")
def _dr_grpo(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
             config: AdvantageConfig, state: AdvantageState, valid: torch.Tensor) -> AdvantageResult:
    """Dr.GRPO: r - group mean, no std division (pair it with seq_mean_token_sum)."""
    return AdvantageResult(_centered(rewards, _groups(rewards, question_ids, valid))[0])


@register_advantage("rloo")
def _rloo(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
          config: AdvantageConfig, state: AdvantageState, valid: torch.Tensor) -> AdvantageResult:
    """RLOO: r_i - mean of the other valid responses of the question = n/(n-1) (r_i - mean)."""
    groups = _groups(rewards, question_ids, valid)
    centered, _ = _centered(rewards, groups)
    count = gather(groups.valid_counts, groups.question).to(torch.float64)
    return AdvantageResult(centered * count / (count - 1).clamp(min=1))


@register_advantage("reinforce_baseline", groups="batch")
def _reinforce_baseline(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
                        config: AdvantageConfig, state: AdvantageState,
                        valid: torch.Tensor) -> AdvantageResult:
    """REINFORCE with a batch baseline: r - mean over valid rows, / batch std if std_normalize."""
    values = rewards[valid].to(torch.float64)
    if values.numel() == 0:
        return AdvantageResult(torch.zeros_like(rewards, dtype=torch.float64))
    advantages = rewards.to(torch.float64) - values.mean()
    if config.std_normalize and values.numel() > 1:
        advantages = risk.std_normalize(advantages, values.std())
    return AdvantageResult(advantages)


# ----------------------------------------------------------------------------- the controls
# What they compute, and the papers' conventions, are in riskpo/algo/baselines.py.


@register_advantage("nsr", groups="none")
def _nsr(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
         config: AdvantageConfig, state: AdvantageState, valid: torch.Tensor) -> AdvantageResult:
    """NSR (Zhu et al. 2025): wrong answers pushed down (-1), right ones untouched."""
    return AdvantageResult(baselines.nsr_advantages(rewards, dense_ids(question_ids)[0], valid))


@register_advantage("w_reinforce", groups="none")
def _w_reinforce(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
                 config: AdvantageConfig, state: AdvantageState, valid: torch.Tensor) -> AdvantageResult:
    """W-REINFORCE (Zhu et al. 2025): +lambda for right answers, -1 for wrong ones."""
    return AdvantageResult(baselines.w_reinforce_advantages(
        rewards, dense_ids(question_ids)[0], valid, positive_weight=config.w_reinforce.positive_weight))


@register_advantage("pkpo")
def _pkpo(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
          config: AdvantageConfig, state: AdvantageState, valid: torch.Tensor) -> AdvantageResult:
    """PKPO (Walder and Karkhanis 2025): unbiased pass@k rewards, k annealed by step."""
    k = config.pkpo.k_at(state.step)
    advantages = baselines.pkpo_advantages(rewards, dense_ids(question_ids)[0], valid, k=k,
                                           baseline=config.pkpo.baseline)
    return AdvantageResult(advantages, {"pkpo/k": float(k)})


@register_advantage("rs_grpo")
def _rs_grpo(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
             config: AdvantageConfig, state: AdvantageState, valid: torch.Tensor) -> AdvantageResult:
    """RS-GRPO (risk-seeking exponential utility within a group)."""
    return AdvantageResult(baselines.rs_grpo_advantages(rewards, dense_ids(question_ids)[0], valid,
                                                         beta=config.rs_grpo.beta))
