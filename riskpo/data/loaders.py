"""Turns a dataset config into checked rows: local jsonl/parquet files in the verl format,
the synthetic tasks, or the built-in package datasets (HumanEval, champ); and the data
options (`data.*`)."""

from __future__ import annotations

import glob
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from riskpo.data.countdown import CountdownConfig
from riskpo.data.rows import Row, RowError, parse_row
from riskpo.data.synthetic import (
    SYNTHETIC_SOURCES,
    ArithmeticConfig,
    CodeTaskConfig,
    countdown_rows,
    generate_rows,
    problem_maker,
)
from riskpo.data.templates import TEMPLATES, check_prompt_lengths
from riskpo.data.visual import VISUAL_SOURCES, VisualTaskConfig, visual_problem_maker
from riskpo.messages import Prompt
from riskpo.options import ConfigError, one_of, require

FILE_SUFFIXES = {"jsonl": (".jsonl", ".json"), "parquet": (".parquet",)}
BUILTIN_SOURCES = ("humaneval", "champ")  # datasets shipped inside installed packages
DATA_SOURCES = (*SYNTHETIC_SOURCES, *VISUAL_SOURCES, *FILE_SUFFIXES, *BUILTIN_SOURCES)
CODE_SOURCES = ("synthetic_code", "humaneval")  # graded by the code verifier
MATH_SOURCES = ("synthetic_arithmetic", "champ", "synthetic_countdown",
                *VISUAL_SOURCES)  # the math actors grade
COUNTDOWN_SPLITS = ("train", "validation", "heldout")
EVAL_SPLITS = ("eval", "validation")  # data.eval_on


@dataclass
class DatasetConfig:
    """One split: where its rows come from (`source`, one of DATA_SOURCES) and how many."""

    source: str = "synthetic_arithmetic"
    files: list[str] = field(default_factory=list)  # jsonl/parquet: files, dirs or globs
    size: int | None = 10000  # rows to generate (synthetic) or keep (others); null: all
    seed: int = 0
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    code: CodeTaskConfig = field(default_factory=CodeTaskConfig)
    countdown: CountdownConfig = field(default_factory=CountdownConfig)
    visual: VisualTaskConfig = field(default_factory=VisualTaskConfig)  # synthetic_visual
    split: str = "train"  # synthetic_countdown: which split of the task (COUNTDOWN_SPLITS)

    def check(self, key: str) -> None:
        one_of(self.source, DATA_SOURCES, f"{key}.source")
        if self.source == "synthetic_countdown":
            self._check_countdown(key)
        elif self.source in VISUAL_SOURCES:
            require(self.size is not None and self.size >= 1, f"{key}.size",
                    "a synthetic dataset needs a number of rows to generate", "e.g. 1000")
            self.visual.check(f"{key}.visual")
        elif self.source in SYNTHETIC_SOURCES:
            require(self.size is not None and self.size >= 1, f"{key}.size",
                    "a synthetic dataset needs a number of rows to generate", "e.g. 1000")
            if self.source == "synthetic_arithmetic":
                self.arithmetic.check(f"{key}.arithmetic")
            else:
                self.code.check(f"{key}.code")
        elif self.size is not None:
            require(self.size >= 1, f"{key}.size", "must be >= 1, or null for all rows")
        if self.source in FILE_SUFFIXES:
            try:
                resolve_files(self.files, self.source)
            except (ValueError, FileNotFoundError) as error:
                raise ConfigError(f"{key}.files", str(error), "name existing files, dirs or globs") from None

    def _check_countdown(self, key: str) -> None:
        self.countdown.check(f"{key}.countdown")
        one_of(self.split, COUNTDOWN_SPLITS, f"{key}.split")
        if self.split == "train":
            require(self.size is not None and self.size >= 1, f"{key}.size",
                    "the Countdown training split needs a number of rows", "e.g. 5000")
        else:
            fixed = getattr(self.countdown, f"{self.split}_size")
            require(self.size in (None, fixed), f"{key}.size",
                    f"the {self.split} split has countdown.{self.split}_size={fixed} rows",
                    f"set {key}.size=null (or {fixed})")


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
        if self.eval.source == "synthetic_countdown":
            require(self.eval.split != "train", f"{key}.eval.split", "evaluates on training rows",
                    "use heldout, or validation to choose learning rates")
        one_of(self.eval_on, EVAL_SPLITS, f"{key}.eval_on")
        require(self.eval_on != "validation" or self.validation is not None, f"{key}.eval_on",
                "is validation, but the data config declares no validation split",
                "use a data config that declares one (data=arithmetic_with_validation, "
                "countdown, code), or eval")
        self.train.check(f"{key}.train")
        self.eval.check(f"{key}.eval")
        if self.validation is not None:
            self.validation.check(f"{key}.validation")
        if self.train.source == self.eval.source == "synthetic_countdown":
            require(self.eval.countdown == self.train.countdown, f"{key}.eval.countdown",
                    "differs from data.train.countdown, but the splits of a Countdown run come "
                    "from one stream of the same task", "set the same knobs on both splits")

    @property
    def sources(self) -> set[str]:
        return {split.source for split in (self.train, self.eval, self.validation) if split}


def load_dataset(config: DatasetConfig, exclude_prompts: Iterable[str] = ()) -> list[Row]:
    """All rows of one dataset config, checked; synthetic rows avoid `exclude_prompts`."""
    if config.source == "synthetic_countdown":
        return countdown_rows(config.countdown, config.split, config.size or 0)
    if config.source in VISUAL_SOURCES:
        return generate_rows(visual_problem_maker(config.visual), config.size or 0, config.seed,
                             exclude_prompts)
    if config.source in SYNTHETIC_SOURCES:
        if config.size is None or config.size < 1:
            raise ValueError(f"{config.source}: size must be a positive number of rows")
        make = problem_maker(config.source, config.arithmetic, config.code)
        return generate_rows(make, config.size, config.seed, exclude_prompts)
    if config.source in FILE_SUFFIXES:
        rows = [row for path in resolve_files(config.files, config.source) for row in read_rows(path)]
    elif config.source == "humaneval":
        from riskpo.data.builtin import humaneval_rows

        rows = humaneval_rows()
    elif config.source == "champ":
        from riskpo.data.builtin import champ_rows

        rows = champ_rows()
    else:
        raise ValueError(f"unknown data source {config.source!r}")
    return _take(rows, config.size, config.seed)


def load_splits(config: DataConfig) -> dict[str, list[Row]]:
    """Every split the config declares, by name (train, eval, validation); synthetic rows
    never repeat a prompt of the held-out splits before them (validation avoids eval's, train
    avoids both), so the splits share no prompt."""
    splits = load_held_out(config)
    splits["train"] = load_dataset(config.train, exclude_prompts=held_out_prompts(splits))
    return splits


def load_held_out(config: DataConfig) -> dict[str, list[Row]]:
    """The splits never trained on: eval, and validation where the config declares one."""
    splits = {"eval": load_dataset(config.eval)}
    if config.validation is not None:
        splits["validation"] = load_dataset(config.validation,
                                            exclude_prompts=held_out_prompts(splits))
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


def resolve_files(patterns: list[str], source: str) -> list[Path]:
    """Files named by paths, directories (their files with the source's suffix) or globs."""
    if not patterns:
        raise ValueError(f"data source {source!r} needs files: data.<split>.files=[path, ...]")
    suffixes = FILE_SUFFIXES[source]
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.suffix in suffixes)
        else:
            matches = sorted(Path(p) for p in glob.glob(str(path)))
        if not matches:
            raise FileNotFoundError(f"data files: nothing matches {pattern!r} (source {source})")
        found.extend(matches)
    return found


def read_rows(path: str | Path) -> list[Row]:
    """Checked rows of one .jsonl/.json or .parquet file; the first bad row raises RowError."""
    path = Path(path)
    raw_rows = _read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)
    return [parse_row(raw, str(path), number) for number, raw in raw_rows]


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Raw rows of a jsonl file. Non-integer numbers are read as Decimals, so a numeric
    ground_truth keeps the exact text the file has (0.00001, never the float 1e-05);
    parse_row turns the other Decimals back into floats."""
    from decimal import Decimal

    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line, parse_float=Decimal)
            except json.JSONDecodeError as error:
                raise RowError(str(path), number, "<json>", f"not valid JSON: {error}") from None


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    """Raw rows of a parquet file. A parquet float is binary: each becomes the Decimal of its
    shortest round-trip repr at its column's precision (rows.decimal_floats), the decimal an
    author wrote, never exponent notation once parse_row spells a ground_truth out."""
    import pyarrow.parquet as pq

    from riskpo.data.rows import decimal_floats

    table = pq.read_table(path)
    for number, row in enumerate(table.to_pylist(), start=1):
        yield number, {field.name: decimal_floats(row[field.name], field.type)
                       for field in table.schema}


def _take(rows: list[Row], size: int | None, seed: int) -> list[Row]:
    """All rows, or a seeded random subset of `size` of them (in their original order)."""
    if size is None or size >= len(rows):
        return rows
    if size < 1:
        raise ValueError(f"dataset size must be >= 1 or null, got {size}")
    keep = sorted(random.Random(seed).sample(range(len(rows)), size))
    return [rows[index] for index in keep]
