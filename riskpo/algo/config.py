"""What `algorithm=` selects: an advantage estimator (`name`) with its own typed options
(`options`, the class it registered; None: its defaults, its vetted recipe), the loss, and DAPO's
dynamic sampling; and the rules that tie them to each other and to the shape of a step (prompts
per step, samples per prompt)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from riskpo.algo.aggregation import get_aggregation
from riskpo.algo.losses import LossConfig
from riskpo.algo.registry import LOSS_WEIGHTS, Estimator, estimators, get_advantage_estimator
from riskpo.options import join, require


@dataclass
class DynamicSamplingConfig:
    """DAPO's dynamic sampling: drop groups whose valid rewards are all equal (no signal),
    then refill with fresh prompts, whole estimator groups at a time."""

    enabled: bool = False
    max_refill_rounds: int = 3

    def check(self, key: str) -> None:
        require(self.max_refill_rounds >= 0, f"{key}.max_refill_rounds", "must be >= 0")


@dataclass
class AlgorithmConfig:
    """The estimator (`name`, a key of the registry) and its options (`options`: an instance of
    the options class it registered, e.g. RiskPOOptions; None gives its defaults), the loss
    (`loss`; None gives the loss of the estimator's recipe) and dynamic sampling.
    AlgorithmConfig() is RiskPO as the ICLR paper states it, loss included; AlgorithmConfig(
    name="grpo") is GRPO's recipe: the runs the presets of the same names make."""

    name: str = "riskpo"
    options: Any = None
    loss: LossConfig | None = None
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)

    def __post_init__(self) -> None:
        recipe = estimators().get(self.name)
        if self.options is None and recipe is not None:
            self.options = recipe.options()
        if self.loss is None:
            self.loss = LossConfig(**recipe.loss) if recipe is not None else LossConfig()

    @property
    def estimator(self) -> Estimator:
        return get_advantage_estimator(self.name)

    def check(self, key: str = "algorithm") -> None:
        estimator = self.estimator
        expected = estimator.options
        require(isinstance(self.options, expected), join(key, "options"),
                f"{_described(self.options)}, but {key}.name={self.name} takes {expected.__name__}",
                f"choose the estimator with its preset ({key.split('.')[-1]}={self.name}) or its "
                f"options ({key.replace('.', '/')}/options={self.name})")
        self.options.check(join(key, "options"))
        self.loss.check(join(key, "loss"))
        self.dynamic_sampling.check(join(key, "dynamic_sampling"))
        if get_aggregation(self.loss.aggregation).needs_loss_weights:
            require(LOSS_WEIGHTS in estimator.capabilities, join(key, "loss.aggregation"),
                    f"{self.loss.aggregation} averages with per-response loss weights, which "
                    f"{self.name} does not provide (estimators that do: "
                    f"{', '.join(_with_capability(LOSS_WEIGHTS))})",
                    "use token_mean or a seq_mean_* mode")
        if self.dynamic_sampling.enabled:
            require(estimator.compares_samples(), join(key, "dynamic_sampling.enabled"),
                    f"drops groups with equal rewards, which {self.name} does not form",
                    f"use one of {', '.join(group_estimators())}")

    def prompts_per_group(self) -> int:
        """Consecutive prompts the estimator treats as one group (RiskPO: a bundle)."""
        return self.estimator.prompts_per_group(self.options)


def _described(options: Any) -> str:
    owners = [name for name, e in estimators().items() if type(options) is e.options]
    return (f"it holds {type(options).__name__}" + (f" ({', '.join(owners)})" if owners else ""))


def _with_capability(capability: str) -> list[str]:
    return [name for name, e in estimators().items() if capability in e.capabilities]


def group_estimators() -> list[str]:
    """Estimators that compare the samples of a prompt: they need n >= 2."""
    return [name for name, e in estimators().items() if e.compares_samples()]


def check_step_shape(algorithm: AlgorithmConfig, prompts_per_step: int, samples_per_prompt: int,
                     trainer_key: str = "trainer") -> None:
    """The step's prompts and samples fit the estimator: n >= 2 for group estimators, and
    prompts that split into whole bundles (or a declared way to handle the rest)."""
    estimator = algorithm.estimator
    if estimator.compares_samples():
        require(samples_per_prompt >= 2, f"{trainer_key}.samples_per_prompt",
                f"n={samples_per_prompt}: {algorithm.name} compares the samples of a prompt, "
                "it needs n >= 2",
                f"set {trainer_key}.samples_per_prompt=2 or more, or algorithm=reinforce_baseline")
    size = algorithm.prompts_per_group()
    if size == 1:
        return
    options, key = algorithm.options, "algorithm.options"
    remainder = prompts_per_step % size
    if remainder:
        require(options.drop_last_bundle or options.ragged_last_bundle,
                f"{trainer_key}.prompts_per_step",
                f"{prompts_per_step} prompts do not split into bundles of {size}",
                f"use a multiple of {size} (e.g. {prompts_per_step - remainder or size}), or "
                f"{key}.drop_last_bundle=true, or {key}.ragged_last_bundle=true")
    if options.drop_last_bundle:
        require(prompts_per_step >= size, f"{trainer_key}.prompts_per_step",
                f"fewer prompts ({prompts_per_step}) than one bundle ({size}) with drop_last_bundle",
                f"raise prompts_per_step or lower {key}.bundle_size")
