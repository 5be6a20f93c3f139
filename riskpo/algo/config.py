"""What `algorithm=` selects: an advantage estimator with its options, the loss, and DAPO's
dynamic sampling; and the rules that tie them to the shape of a step (prompts per step,
samples per prompt)."""

from __future__ import annotations

from dataclasses import dataclass, field

from riskpo.algo.losses import LossConfig
from riskpo.algo.registry import ADVANTAGE_ESTIMATORS, AdvantageConfig, get_advantage_estimator
from riskpo.options import join, one_of, require


@dataclass
class DynamicSamplingConfig:
    """DAPO's dynamic sampling: drop groups whose valid rewards are all equal (no signal),
    then refill with fresh prompts, whole estimator groups at a time."""

    enabled: bool = False
    max_refill_rounds: int = 3

    def check(self, key: str) -> None:
        require(self.max_refill_rounds >= 0, f"{key}.max_refill_rounds", "must be >= 0")


@dataclass
class AlgorithmConfig(AdvantageConfig):
    """The estimator (`name`, a key of the advantage registry) and its options (inherited:
    `algorithm.alpha`, ...), the loss (`algorithm.loss`) and dynamic sampling."""

    name: str = "riskpo"
    loss: LossConfig = field(default_factory=LossConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)

    def check(self, key: str = "algorithm", name: str | None = None) -> None:
        one_of(self.name, sorted(ADVANTAGE_ESTIMATORS), join(key, "name"))
        super().check(key, self.name)
        self.loss.check(join(key, "loss"))
        self.dynamic_sampling.check(join(key, "dynamic_sampling"))
        require(self.loss.aggregation != "paper_mean" or self.name == "riskpo",
                join(key, "loss.aggregation"),
                f"paper_mean averages over RiskPO's papers, which {self.name} does not form",
                "use token_mean or a seq_mean_* mode")
        if self.dynamic_sampling.enabled:
            require(get_advantage_estimator(self.name).groups in ("question", "bundle"),
                    join(key, "dynamic_sampling.enabled"),
                    f"drops groups with equal rewards, which {self.name} does not form",
                    f"use one of {', '.join(group_estimators())}")

    def prompts_per_group(self) -> int:
        """Consecutive prompts the estimator treats as one group (RiskPO: a bundle)."""
        return get_advantage_estimator(self.name).prompts_per_group(self)


def group_estimators() -> list[str]:
    """Estimators that compare the samples of a prompt: they need n >= 2."""
    return sorted(name for name, e in ADVANTAGE_ESTIMATORS.items() if e.groups in ("question", "bundle"))


def check_step_shape(algorithm: AlgorithmConfig, prompts_per_step: int, samples_per_prompt: int,
                     trainer_key: str = "trainer") -> None:
    """The step's prompts and samples fit the estimator: n >= 2 for group estimators, and
    prompts that split into whole bundles (or a declared way to handle the rest)."""
    estimator = get_advantage_estimator(algorithm.name)
    if estimator.groups in ("question", "bundle"):
        require(samples_per_prompt >= 2, f"{trainer_key}.samples_per_prompt",
                f"n={samples_per_prompt}: {algorithm.name} compares the samples of a prompt, "
                "it needs n >= 2",
                f"set {trainer_key}.samples_per_prompt=2 or more, or algorithm=reinforce_baseline")
    size = estimator.prompts_per_group(algorithm)
    remainder = prompts_per_step % size
    if remainder:
        require(algorithm.drop_last_bundle or algorithm.ragged_last_bundle,
                f"{trainer_key}.prompts_per_step",
                f"{prompts_per_step} prompts do not split into bundles of {size}",
                f"use a multiple of {size} (e.g. {prompts_per_step - remainder or size}), or "
                "algorithm.drop_last_bundle=true, or algorithm.ragged_last_bundle=true")
    if algorithm.drop_last_bundle and size > 1:
        require(prompts_per_step >= size, f"{trainer_key}.prompts_per_step",
                f"fewer prompts ({prompts_per_step}) than one bundle ({size}) with drop_last_bundle",
                "raise prompts_per_step or lower bundle_size")
