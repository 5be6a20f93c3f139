"""The data options (`data.*`) and turning them into checked rows: each split names a task
(`data.<split>.source`, riskpo/data/registry.py) with its typed options, and the task makes or
loads the split's rows; the held-out splits are loaded first, so that generated training rows
never repeat one of their prompts."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from riskpo.data.registry import SPLITS, SplitRequest, Task, task_named
from riskpo.data.rows import Row
from riskpo.data.templates import TEMPLATES, check_prompt_lengths
from riskpo.messages import Prompt
from riskpo.options import one_of, require

EVAL_SPLITS = ("eval", "validation")  # data.eval_on


@dataclass
class DatasetConfig:
    """One split: the task its rows come from (`source`, a registered task's name), how many,
    and the task's options (`options`, typed by the task; null: its defaults)."""

    source: str = "synthetic_arithmetic"
    size: int | None = 10000  # rows to generate (generated tasks) or keep (others); null: all
    seed: int = 0
    options: Any = None  # data.<split>.options.*: the task's options (see its module)

    @property
    def task(self) -> Task:
        return task_named(self.source)

    def task_options(self, key: str = "data.<split>") -> Any:
        """The options as the task's options class; ConfigError naming the key of an option
        the task does not declare or of a value of the wrong type."""
        return self.task.typed_options(self.options, f"{key}.options")

    def request(self, split: str, exclude_prompts: Iterable[str] = ()) -> SplitRequest:
        return SplitRequest(split, self.size, self.seed, frozenset(exclude_prompts))

    def check(self, key: str, split: str) -> None:
        """Checks the split (`split`: train, eval or validation) and types its options."""
        task = task_named(self.source, f"{key}.source")
        self.options = self.task_options(key)
        task.check(self.options, self.request(split), key)


@dataclass
class DataConfig:
    """Training and held-out data, how a row becomes a prompt, and the evaluation's sampling."""

    train: DatasetConfig = field(default_factory=DatasetConfig)
    eval: DatasetConfig = field(
        default_factory=lambda: DatasetConfig(size=200, seed=1)
    )  # held out: synthetic eval rows never repeat a training prompt
    # a validation split fixed in advance, for choosing settings (learning rates): never
    # trained on, never repeats an eval prompt; null: none
    validation: DatasetConfig | None = None
    eval_on: str = "eval"  # the split the run evaluates on: one of EVAL_SPLITS
    template: str = "plain"  # see templates.TEMPLATES
    system_prompt: str | None = None  # chat template only
    instruction: str | None = None  # appended to each question (chat template only)
    max_prompt_length: int = 64  # tokens; a longer prompt is an error at load time
    shuffle: bool = True  # shuffle training prompts each epoch (seeded)
    eval_samples: int = 8  # k samples per eval prompt (avg@k, pass@k)
    eval_pass_k: list[int] | None = None  # null: 1, 2, 4, ... up to eval_samples
    eval_greedy: bool = True  # also report greedy accuracy

    def check(self, key: str) -> None:
        one_of(self.template, TEMPLATES, f"{key}.template")
        if self.template == "plain":
            require(not self.system_prompt and not self.instruction, f"{key}.instruction",
                    "system_prompt/instruction only apply to chat prompts",
                    f"use {key}.template=chat or unset them")
        require(self.max_prompt_length >= 1, f"{key}.max_prompt_length", "must be >= 1")
        require(self.eval_samples >= 1, f"{key}.eval_samples", "must be >= 1")
        for k in self.eval_pass_k or []:
            require(1 <= k <= self.eval_samples, f"{key}.eval_pass_k",
                    f"pass@{k} needs at least {k} samples but {key}.eval_samples={self.eval_samples}",
                    f"use k values in 1..{self.eval_samples}, or raise {key}.eval_samples")
        one_of(self.eval_on, EVAL_SPLITS, f"{key}.eval_on")
        require(self.eval_on != "validation" or self.validation is not None, f"{key}.eval_on",
                "is validation, but the data config declares no validation split",
                "use a data config that declares one (data=arithmetic_with_validation, "
                "countdown, code), or eval")
        splits = self.splits
        for name, split in splits.items():
            split.check(f"{key}.{name}", name)
        for task in {split.task.name: split.task for split in splits.values()}.values():
            task.check_splits({name: split.options for name, split in splits.items()
                               if split.source == task.name}, key)

    @property
    def splits(self) -> dict[str, DatasetConfig]:
        """The splits the config declares, by name (train, eval, validation)."""
        return {name: getattr(self, name) for name in SPLITS if getattr(self, name) is not None}


def load_dataset(config: DatasetConfig, split: str = "train",
                 exclude_prompts: Iterable[str] = ()) -> list[Row]:
    """The rows of one split (`split`: train, eval or validation) from its task; generated rows
    avoid `exclude_prompts`."""
    return config.task.rows(config.task_options(f"data.{split}"), config.request(split, exclude_prompts))


def load_splits(config: DataConfig) -> dict[str, list[Row]]:
    """Every split the config declares, by name (train, eval, validation); synthetic rows
    never repeat a prompt of the held-out splits before them (validation avoids eval's, train
    avoids both), so the splits share no prompt."""
    splits = load_held_out(config)
    splits["train"] = load_dataset(config.train, "train", held_out_prompts(splits))
    return splits


def load_held_out(config: DataConfig) -> dict[str, list[Row]]:
    """The splits never trained on: eval, and validation where the config declares one."""
    splits = {"eval": load_dataset(config.eval, "eval")}
    if config.validation is not None:
        splits["validation"] = load_dataset(config.validation, "validation",
                                            held_out_prompts(splits))
    return splits


def held_out_prompts(splits: dict[str, list[Row]]) -> set[str]:
    """The prompts of the splits that are not the training split."""
    return {row.prompt_key for name, rows in splits.items() if name != "train" for row in rows}


def load_train_and_eval(config: DataConfig) -> tuple[list[Row], list[Row]]:
    """Training rows and the rows the run evaluates on (data.eval_on: the held-out split, or
    the validation split when choosing settings)."""
    splits = load_splits(config)
    return splits["train"], splits[config.eval_on]


def load_checked_data(config: DataConfig, prompt_length: Callable[[Prompt, int], int]
                      ) -> tuple[list[Row], list[Row]]:
    """Training and held-out rows, every prompt checked against data.max_prompt_length as
    prompt_length counts it (the engines' tokenizer: riskpo.models.loading.prompt_length_counter):
    a longer prompt is a RowError naming the row and its length."""
    train_rows, eval_rows = load_train_and_eval(config)
    for split, rows in (("train", train_rows), (config.eval_on, eval_rows)):
        check_prompt_lengths(rows, prompt_length, config.template, config.max_prompt_length,
                             f"data.{split} ({getattr(config, split).source})",
                             config.system_prompt, config.instruction)
    return train_rows, eval_rows
