"""The Countdown task: reach a target from given numbers with + - * and parentheses, each number
used at most once. Problems have several distinct correct expressions (riskpo/data/expressions.py),
classified by template, so that a warm start can make one template dominant and another rare,
and held-out rows can need the rare one. Pure Python, seeded. Prompt "2,3,5,7,9=29:" (numbers
ascending), answer "3*7+5"; row data_source "countdown", reward_model.ground_truth {"target",
"numbers"} (TinyZero/verl), extra_info: kind, distinct_solutions, dominant/rare_solutions,
templates. A problem's kind (both, dominant_only, rare_only) says which of the two templates
solve it. Graded by the Countdown verifier, which runs in the math actors; the evaluation adds
the distinct correct expressions per problem and avg@k / pass@k per kind.

The run's three splits come from one stream (make_splits): train, a validation split fixed in
advance (data.validation) and the held-out split (data.eval).
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from riskpo.data.expressions import (
    all_solutions,
    clear_cache,
    count_distinct_solutions,
    expression_shape,
    parsed_template,
    solves,
    template_letters,
    template_solutions,
    value_of,
)
from riskpo.data.registry import ProblemMaker, SplitRequest, Task, register_task
from riskpo.data.rows import Row
from riskpo.data.synthetic import SyntheticProblem
from riskpo.options import ConfigError, require

COUNTDOWN_SOURCE = "countdown"  # the rows' data_source (the TinyZero/verl convention)
KINDS = ("both", "dominant_only", "rare_only")
MAX_NUMBERS = 5  # the all-expression enumeration grows super-exponentially
MAX_MISSES = 2000  # draws in a row that give no new problem: the space is exhausted
SPLIT_PARTS = {"train": "train", "eval": "heldout", "validation": "validation"}  # run split -> part


@dataclass
class CountdownOptions:
    """`data.<split>.options.*` of the Countdown task (the same for every split of a run);
    validation and held-out sizes are fixed here so that every split of a run comes from the
    same make_splits call."""

    num_numbers: int = 5
    min_number: int = 1
    max_number: int = 9
    min_target: int = 10
    max_target: int = 99
    dominant_template: str = "a*b+c"
    rare_template: str = "(a+b)*c"
    rare_fraction: float = 0.1  # warm-start solutions written with the rare template
    train_rare_only_fraction: float = 0.25  # of train rows; the rest of each split's
    train_both_fraction: float = 0.25  # rows are dominant_only problems
    eval_rare_only_fraction: float = 0.5  # of validation and of held-out rows
    eval_both_fraction: float = 0.25
    validation_size: int = 200  # fixed in advance: learning-rate selection
    heldout_size: int = 200
    seed: int = 0

    def check(self, key: str) -> None:
        try:  # validate(), naming the knob under `key`
            self.validate()
        except ValueError as error:
            knob, _, problem = str(error).removeprefix("countdown.").partition(": ")
            raise ConfigError(f"{key}.{knob}", problem) from None

    def validate(self) -> None:
        """Raises ValueError naming the first bad knob."""
        _require(2 <= self.num_numbers <= MAX_NUMBERS, "num_numbers",
                 f"{self.num_numbers} is not in [2, {MAX_NUMBERS}]")
        _require(0 <= self.min_number <= self.max_number <= 10**6, "min_number/max_number",
                 f"need 0 <= min <= max <= 10**6, got {self.min_number}..{self.max_number}")
        _require(self.min_target <= self.max_target, "min_target/max_target",
                 f"empty target range {self.min_target}..{self.max_target}")
        for name in ("dominant_template", "rare_template"):
            try:
                letters = template_letters(getattr(self, name))
            except ValueError as error:
                raise ValueError(f"countdown.{name}: {error}") from None
            _require(2 <= len(letters) <= self.num_numbers, name,
                     f"uses {len(letters)} numbers; need 2..num_numbers={self.num_numbers}")
        _require(expression_shape(self.dominant_template, True)
                 != expression_shape(self.rare_template, True), "rare_template",
                 f"{self.rare_template!r} has the shape of {self.dominant_template!r}")
        _require(0.0 <= self.rare_fraction <= 0.5, "rare_fraction",
                 f"{self.rare_fraction} is not in [0, 0.5] (the rare template must stay rare)")
        for split in ("train", "eval"):
            rare_only, both = f"{split}_rare_only_fraction", f"{split}_both_fraction"
            for name in (rare_only, both):
                _require(0.0 <= getattr(self, name) <= 1.0, name, "must be in [0, 1]")
            _require(getattr(self, rare_only) + getattr(self, both) <= 1.0, both,
                     f"{rare_only} + {both} > 1")
        _require(min(self.seed, self.validation_size, self.heldout_size) >= 0, "seed", "negative")


def _require(ok: bool, knob: str, problem: str) -> None:
    if not ok:
        raise ValueError(f"countdown.{knob}: {problem}")


# --------------------------------------------------------------------------- problems and rows


@dataclass(frozen=True)
class CountdownProblem:
    numbers: tuple[int, ...]  # ascending
    target: int
    dominant: dict[str, str]  # the dominant template's solutions {canonical key: text}
    rare: dict[str, str]

    @property
    def kind(self) -> str | None:
        if self.dominant and self.rare:
            return "both"
        return "dominant_only" if self.dominant else "rare_only" if self.rare else None

    @property
    def prompt(self) -> str:
        return format_prompt(self.numbers, self.target)

    def row(self, config: CountdownOptions, count_all: bool = True) -> Row:
        """The problem as a row; extra_info.distinct_solutions counts every distinct correct
        expression (about 1 ms for 5 numbers; left out when not count_all)."""
        templates = [t for t, found in ((config.dominant_template, self.dominant),
                                        (config.rare_template, self.rare)) if found]
        extra = {"kind": self.kind, "dominant_solutions": len(self.dominant),
                 "rare_solutions": len(self.rare), "templates": templates}
        if count_all:
            extra["distinct_solutions"] = len(all_solutions(self.numbers, self.target))
        truth = {"target": self.target, "numbers": list(self.numbers)}
        return Row(prompt=self.prompt, data_source=COUNTDOWN_SOURCE,
                   reward_model={"style": "rule", "ground_truth": truth}, extra_info=extra)


def format_prompt(numbers: Iterable[int], target: int) -> str:
    return ",".join(str(number) for number in sorted(numbers)) + f"={target}:"


def make_problem(numbers: Iterable[int], target: int, config: CountdownOptions) -> CountdownProblem:
    numbers = tuple(sorted(numbers))
    return CountdownProblem(numbers, target,
                            template_solutions(config.dominant_template, numbers, target),
                            template_solutions(config.rare_template, numbers, target))


def _draw(rng: random.Random, config: CountdownOptions) -> tuple[list[int], int] | None:
    """Random numbers and the value of a random filling of the dominant or the rare template
    (even odds) as the target; None when that is outside the target range."""
    numbers = [rng.randint(config.min_number, config.max_number)
               for _ in range(config.num_numbers)]
    tree, letters = parsed_template(rng.choice((config.dominant_template, config.rare_template)))
    target = value_of(tree, dict(zip(letters, rng.sample(numbers, len(letters)), strict=True)))
    return (numbers, target) if config.min_target <= target <= config.max_target else None


def problem_stream(config: CountdownOptions, seed: int, exclude_prompts: Iterable[str] = (),
                   kinds: Iterable[str] = KINDS, purpose: str = "rows") -> Iterator[CountdownProblem]:
    """Distinct problems of the given kinds from a stream seeded by (purpose, seed), no prompt
    excluded; ends with ValueError after MAX_MISSES draws in a row that give nothing new. (Each
    purpose has its own stream, so excluding one stream's rows does not starve another.)"""
    config.validate()
    rng, seen, misses = random.Random(f"countdown/{purpose}/{seed}"), set(exclude_prompts), 0
    kinds = set(kinds)
    while misses < MAX_MISSES:
        drawn = _draw(rng, config)
        prompt = drawn and format_prompt(*drawn)
        if drawn is None or prompt in seen:
            misses += 1
            continue
        seen.add(prompt)  # classified once: kept or not, never again
        problem = make_problem(*drawn, config)
        misses = 0 if problem.kind in kinds else misses + 1
        if problem.kind in kinds:
            yield problem
    raise ValueError(f"countdown: no new problem of kinds {sorted(kinds)} in {MAX_MISSES} draws "
                     "(the space is exhausted: widen the number or target range, or ask for less)")


# --------------------------------------------------------------------------- splits and warm start


@dataclass(frozen=True)
class CountdownSplits:
    train: list[Row]  # train_* mix of kinds
    validation: list[Row]  # fixed in advance (learning-rate selection); eval_* mix of kinds
    heldout: list[Row]  # the same mix as validation; the three splits share no problem


def kind_quotas(size: int, rare_only_fraction: float, both_fraction: float) -> dict[str, int]:
    """How many rows of each kind a split of `size` rows holds (the rest: dominant_only)."""
    rare_only = round(size * rare_only_fraction)
    both = min(round(size * both_fraction), size - rare_only)
    return {"both": both, "dominant_only": size - rare_only - both, "rare_only": rare_only}


def make_splits(config: CountdownOptions, train_size: int, validation_size: int,
                heldout_size: int) -> CountdownSplits:
    """Disjoint train / validation / held-out rows from one stream seeded by config.seed, each
    filled to its kind quotas (a problem goes to validation, else held-out, else train)."""
    for name, size in (("train_size", train_size), ("validation_size", validation_size),
                       ("heldout_size", heldout_size)):
        _require(size >= 0, name, f"{size} is negative")
    evaluation = (config.eval_rare_only_fraction, config.eval_both_fraction)
    wanted = [kind_quotas(validation_size, *evaluation), kind_quotas(heldout_size, *evaluation),
              kind_quotas(train_size, config.train_rare_only_fraction, config.train_both_fraction)]
    splits: list[list[Row]] = [[], [], []]
    stream, unused = problem_stream(config, config.seed), 0
    while any(sum(quota.values()) for quota in wanted):
        problem, unused = next(stream), unused + 1
        for split, quota in zip(splits, wanted, strict=True):
            if quota[problem.kind]:
                quota[problem.kind] -= 1
                split.append(problem.row(config))
                unused = 0
                break
        missing = sorted({kind for quota in wanted for kind, left in quota.items() if left})
        _require(unused < MAX_MISSES, "templates", f"no {missing} problem in {MAX_MISSES} new "
                 "ones: these templates and ranges (almost) never make such problems")
    clear_cache()
    return CountdownSplits(train=splits[2], validation=splits[0], heldout=splits[1])


def warmstart_pool(config: CountdownOptions, seed: int, exclude_prompts: Iterable[str] = (),
                   max_problems: int = 4096) -> list[CountdownProblem]:
    """Up to max_problems distinct problems that BOTH templates solve (fewer when the space
    runs out), for warm start: on them the template is a prior, not decided by the problem."""
    pool: list[CountdownProblem] = []
    with contextlib.suppress(ValueError):  # the space ran out: keep what was found
        for problem in problem_stream(config, seed, exclude_prompts, ("both",), "warmstart"):
            pool.append(problem)
            if len(pool) == max_problems:
                break
    if not pool:
        raise ValueError("countdown: no problem that both templates solve (widen the ranges or "
                         "choose templates that share solvable problems)")
    return pool


def warmstart_example(rng: random.Random, pool: list[CountdownProblem],
                      rare_fraction: float) -> tuple[CountdownProblem, str]:
    """A pool problem and its warm-start solution, written with the rare template with
    probability rare_fraction, else with the dominant one (the streaming form)."""
    return _pair(rng, pool, rng.random() < rare_fraction)


def _pair(rng: random.Random, pool: list[CountdownProblem],
          rare: bool) -> tuple[CountdownProblem, str]:
    problem = pool[rng.randrange(len(pool))]
    solutions = sorted((problem.rare if rare else problem.dominant).values())
    return problem, solutions[rng.randrange(len(solutions))]


def warmstart_pairs(config: CountdownOptions, count: int, seed: int,
                    exclude_prompts: Iterable[str] = ()) -> list[tuple[str, str]]:
    """`count` pairs on a seeded pool, exactly round(count * rare_fraction) of them written with
    the rare template (a random one of its distinct solutions), in a seeded random order."""
    rng = random.Random(seed)
    pool = warmstart_pool(config, seed, exclude_prompts)
    rare = round(count * config.rare_fraction)
    flags = [True] * rare + [False] * (count - rare)
    rng.shuffle(flags)
    return [(problem.prompt, text) for problem, text in (_pair(rng, pool, f) for f in flags)]


# --------------------------------------------------------------------------- the task


@register_task
class Countdown(Task):
    name = "synthetic_countdown"
    options = CountdownOptions
    verifier = "math"  # the Countdown grader runs in the math actors (the request's "grader")
    row_source = COUNTDOWN_SOURCE
    verdict_details = ("expression",)  # the expression the verifier read
    eval_groups = "kind"
    tiny_model = "text"

    def check(self, options: CountdownOptions, split: SplitRequest, key: str) -> None:
        options.check(f"{key}.options")
        part = SPLIT_PARTS[split.split]
        if part == "train":
            require(split.size is not None and split.size >= 1, f"{key}.size",
                    "the Countdown training split needs a number of rows", "e.g. 5000")
            return
        fixed = getattr(options, f"{part}_size")
        require(split.size in (None, fixed), f"{key}.size",
                f"the {part} split has options.{part}_size={fixed} rows",
                f"set {key}.size=null (or {fixed})")

    def check_splits(self, options: Mapping[str, Any], key: str) -> None:
        """Every split of a run comes from one stream of the same task."""
        first, *others = options.items()
        for split, theirs in others:
            if theirs != first[1]:
                raise ConfigError(f"{key}.{split}.options", f"differs from {key}.{first[0]}.options, "
                                  "but the splits of a Countdown run come from one stream of the "
                                  "same task", "set the same options on every split")

    def rows(self, options: CountdownOptions, split: SplitRequest) -> list[Row]:
        """One part of the task's split (data.eval is its held-out part): every split of a run
        comes from the same stream (make_splits), so they never share a problem."""
        part = SPLIT_PARTS[split.split]
        train_size = (split.size or 0) if part == "train" else 0
        splits = make_splits(options, train_size, options.validation_size, options.heldout_size)
        return getattr(splits, part)

    def request(self, row: Row, response: str) -> dict[str, Any]:
        return {"kind": "math", "grader": "countdown", "response": response,
                "data_source": row.data_source,
                "ground_truth": (row.reward_model or {}).get("ground_truth")}

    def problem_metrics(self, row: Row, correct: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """distinct_correct: how many canonically distinct expressions its correct samples hold."""
        truth = (row.reward_model or {}).get("ground_truth") or {}
        truth = json.loads(truth) if isinstance(truth, str) else truth
        found = [sample["expression"] for sample in correct if sample.get("expression")]
        return {"distinct_correct": float(count_distinct_solutions(
            found, truth.get("numbers", []), int(truth.get("target", 0))))}

    def warmstart_problems(self, options: CountdownOptions, exclude_prompts: set[str]) -> ProblemMaker:
        """Problems both templates solve (none of exclude_prompts), written with the rare
        template with options.rare_fraction odds; any correct expression counts as solved."""
        pool = warmstart_pool(options, options.seed, exclude_prompts)
        return lambda rng: _warmstart_problem(rng, pool, options)

    def warmstart_exclusions(self, options: CountdownOptions) -> set[str]:
        """Both held-out parts of the task, whichever split the run evaluates on."""
        splits = make_splits(options, 0, options.validation_size, options.heldout_size)
        return {row.prompt_key for row in splits.validation + splits.heldout}

    def warmstart_settings(self, options: CountdownOptions, split: str) -> dict[str, Any]:
        return {"countdown": asdict(options), "split": SPLIT_PARTS[split]}


def _warmstart_problem(rng: random.Random, pool: list[CountdownProblem],
                       config: CountdownOptions) -> SyntheticProblem:
    problem, solution = warmstart_example(rng, pool, config.rare_fraction)
    numbers, target = problem.numbers, problem.target
    return SyntheticProblem(problem.row(config, count_all=False), solution,
                            lambda response: solves(response, numbers, target))
