"""The registry of advantage estimators. An estimator is one module of riskpo/algo/estimators/
that declares its options (a dataclass whose defaults are its vetted recipe), its grouping and
its capabilities, and registers its function with `register_estimator`; the modules are found
and imported the first time the registry is asked (`estimators()`, `get_advantage_estimator`),
so a new estimator is one module (and one preset in conf/algorithm/) and nothing else.

Every estimator function has the signature
    fn(rewards[N], question_ids[N], bundle_ids[N], options, state, valid[N]) -> AdvantageResult
and is called through its Estimator, which checks the rewards (one rule for all: a valid row
needs a finite reward), forms consecutive bundles for a "bundle" estimator when no bundle ids
are given, zeroes the rows with valid False (infrastructure failures: they enter no
statistic), adds the adv/* statistics and counts the step.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from riskpo.algo.bundles import consecutive_bundles
from riskpo.algo.metrics import advantage_statistics
from riskpo.algo.risk import QuantileTracker
from riskpo.options import ConfigError

ESTIMATORS_PACKAGE = "riskpo.algo.estimators"
# question: group baselines (n >= 2 samples per prompt); bundle: consecutive questions in
# bundles of options.bundle_size (RiskPO); batch: one baseline for the step; none: each
# response on its own.
GROUPINGS = ("question", "bundle", "batch", "none")
# The fields a "bundle" estimator's options declare: the sampler keeps bundles whole, and a
# step whose prompts do not fill the last one drops it or keeps it smaller.
BUNDLE_FIELDS = ("bundle_size", "drop_last_bundle", "ragged_last_bundle")
# What an estimator can provide beyond advantages, named where a loss needs it:
# loss_weights: per-response weights of the loss (RiskPO: 1 / (papers x responses in its
# paper)), which algorithm.loss.aggregation=paper_mean averages with.
LOSS_WEIGHTS = "loss_weights"
CAPABILITIES = (LOSS_WEIGHTS,)


@dataclass
class NoOptions:
    """The options of an estimator that has none (Dr.GRPO, RLOO, NSR)."""

    def check(self, key: str) -> None:
        """Nothing to check."""


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
    # [N] per-response weights of the loss, from an estimator that declares LOSS_WEIGHTS
    loss_weights: torch.Tensor | None = None


EstimatorFn = Callable[..., AdvantageResult]


@dataclass(frozen=True)
class Estimator:
    """A registered estimator: its name, function, options class (defaults = its recipe),
    grouping (one of GROUPINGS), capabilities (a subset of CAPABILITIES) and the loss of its
    recipe (the algorithm.loss fields that differ from LossConfig's defaults)."""

    name: str
    fn: EstimatorFn
    options: type
    groups: str
    capabilities: frozenset[str] = frozenset()
    loss: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def prompts_per_group(self, options: Any) -> int:
        """How many consecutive prompts form one of its groups (the sampler keeps them whole)."""
        return options.bundle_size if self.groups == "bundle" else 1

    def compares_samples(self) -> bool:
        """Whether it compares the samples of a prompt (then a step needs n >= 2 of them)."""
        return self.groups in ("question", "bundle")

    def __call__(self, rewards: torch.Tensor, question_ids: torch.Tensor,
                 bundle_ids: torch.Tensor | None = None, options: Any = None,
                 state: AdvantageState | None = None,
                 valid: torch.Tensor | None = None) -> AdvantageResult:
        """Advantages [N] (rewards' float dtype) with the adv/* statistics; options None: the
        estimator's defaults; state None: a fresh one."""
        options = self.options() if options is None else options
        if not isinstance(options, self.options):
            raise TypeError(f"estimator {self.name!r} takes {self.options.__name__}, "
                            f"got {type(options).__name__}")
        state = state if state is not None else AdvantageState()
        valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.bool()
        _check_rewards(rewards, question_ids, valid)
        if bundle_ids is None:
            bundle_ids = (consecutive_bundles(question_ids, options.bundle_size)
                          if self.groups == "bundle" else question_ids)
        result = self.fn(rewards, question_ids, bundle_ids, options, state, valid)
        advantages = torch.where(valid, result.advantages, 0.0).to(_float_dtype(rewards))
        metrics = {**result.metrics,
                   **advantage_statistics(advantages, rewards, question_ids, valid)}
        state.step += 1
        return AdvantageResult(advantages, metrics, result.loss_weights)


_REGISTERED: dict[str, Estimator] = {}
_LOADED = False


def register_estimator(name: str, options: type = NoOptions, groups: str = "question",
                       capabilities: tuple[str, ...] = (), loss: Mapping[str, Any] | None = None
                       ) -> Callable[[EstimatorFn], Estimator]:
    """Register `fn(rewards, question_ids, bundle_ids, options, state, valid)` under `name`,
    with its options dataclass (which has check(key)), grouping, capabilities and the loss of
    its recipe (algorithm.loss fields that differ from LossConfig's defaults)."""
    if groups not in GROUPINGS:
        raise ValueError(f"estimator {name!r}: groups must be one of {GROUPINGS}, got {groups!r}")
    unknown = set(capabilities) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"estimator {name!r}: unknown capabilities {sorted(unknown)}; "
                         f"known: {CAPABILITIES}")
    if not dataclasses.is_dataclass(options) or not callable(getattr(options, "check", None)):
        raise ValueError(f"estimator {name!r}: options must be a dataclass with check(key)")
    declared = {f.name for f in dataclasses.fields(options)}
    if groups == "bundle" and not declared.issuperset(BUNDLE_FIELDS):
        raise ValueError(f"estimator {name!r} groups in bundles: its options must declare "
                         f"{', '.join(BUNDLE_FIELDS)}")

    def decorate(fn: EstimatorFn) -> Estimator:
        if name in _REGISTERED:
            raise ValueError(f"advantage estimator {name!r} registered twice")
        _REGISTERED[name] = Estimator(name, fn, options, groups, frozenset(capabilities),
                                      dict(loss or {}))
        return _REGISTERED[name]

    return decorate


def load_estimators() -> None:
    """Imports every module of riskpo/algo/estimators/ once (each registers its estimators)."""
    global _LOADED
    if _LOADED:
        return
    package = importlib.import_module(ESTIMATORS_PACKAGE)
    for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{ESTIMATORS_PACKAGE}.{module.name}")
    _LOADED = True


def estimators() -> dict[str, Estimator]:
    """Every registered estimator by name (the estimator modules loaded on first use)."""
    load_estimators()
    return dict(sorted(_REGISTERED.items()))


def get_advantage_estimator(name: str) -> Estimator:
    """The estimator registered under `name`; a ConfigError naming algorithm.name otherwise."""
    known = estimators()
    if name not in known:
        nearest = difflib.get_close_matches(str(name), known, n=1)
        hint = f"did you mean {nearest[0]}? " if nearest else ""
        raise ConfigError("algorithm.name", f"{name!r} is not a known advantage estimator",
                          f"{hint}known: {', '.join(known)}")
    return known[name]


def estimators_with_option(key: str) -> list[str]:
    """The estimators whose options declare `key` (for messages about a misplaced option)."""
    return [name for name, estimator in estimators().items()
            if key in {f.name for f in dataclasses.fields(estimator.options)}]


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
