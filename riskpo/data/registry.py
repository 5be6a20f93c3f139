"""The task registry: a task is one module in riskpo/data/tasks/ that registers a `Task`,
declaring its name (the `data.<split>.source` value), its typed options (defaults = its recipe),
how it makes or loads a split's rows, how a row becomes a verification request and which
verifier kind grades it, its extra evaluation metrics and, where the tiny models can learn it,
its warm start. The modules are found and imported the first time the registry is asked, so a
new task is one module (and a conf/data/<name>.yaml) and nothing else changes.

    @register_task
    class Arithmetic(GeneratedTask):   # rows, checks and warm start from a stream of problems
        name = "synthetic_arithmetic"
        options = ArithmeticOptions
        verifier = "math"
        settings_key = "arithmetic"

        def problem(self, rng, options):
            return arithmetic_problem(rng, options)
"""

from __future__ import annotations

import abc
import difflib
import importlib
import pkgutil
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, ClassVar

from riskpo.data.rows import Row
from riskpo.data.synthetic import SyntheticProblem, generate_rows
from riskpo.options import ConfigError, require

TASKS_PACKAGE = "riskpo.data.tasks"
VERIFIER_KINDS = ("math", "code")  # the verifier pool's actor kinds
TINY_MODELS = ("text", "vision")  # the tiny character model, the tiny vision-language model
SPLITS = ("train", "eval", "validation")  # the splits of a run's data config

ProblemMaker = Callable[[random.Random], SyntheticProblem]


@dataclass(frozen=True)
class SplitRequest:
    """What a task is asked for: the rows of one split of the run (data.<split>)."""

    split: str  # one of SPLITS
    size: int | None  # data.<split>.size: rows to make (generated tasks) or keep; None: all
    seed: int  # data.<split>.seed
    exclude_prompts: frozenset[str] = frozenset()  # prompt keys of the held-out splits


class Task(abc.ABC):
    """A task's declaration; a module subclasses it and registers it with @register_task.

    Class attributes: `name` (data.<split>.source), `options` (a dataclass whose defaults are
    the task's recipe, with a check(key) method), `verifier` (the verifier kind that grades
    its rows, one of VERIFIER_KINDS; None where each row's shape says, as for rows read from
    files), `row_source` (the data_source of the rows it makes, so that such a row read from a
    file is graded and measured as this task does), `verdict_details` and `eval_groups` (what
    its evaluation metrics read), `tiny_model` (which tiny model can be warm-started on it).
    """

    name: ClassVar[str]
    options: ClassVar[type]
    verifier: ClassVar[str | None]
    row_source: ClassVar[str | None] = None
    verdict_details: ClassVar[tuple[str, ...]] = ()  # result fields problem_metrics reads
    eval_groups: ClassVar[str | None] = None  # an extra_info field: avg@k, pass@k per value
    tiny_model: ClassVar[str | None] = None  # one of TINY_MODELS: it has a warm start

    # ------------------------------------------------------------------ rows

    def check(self, options: Any, split: SplitRequest, key: str) -> None:
        """Raises ConfigError naming the key (under `key`, data.<split>) of a setting of this
        split that cannot work; the options' own checks come first."""
        options.check(f"{key}.options")

    def check_splits(self, options: Mapping[str, Any], key: str) -> None:
        """Rules across the splits of one run that use this task (options by split name);
        by default there are none."""
        return None

    @abc.abstractmethod
    def rows(self, options: Any, split: SplitRequest) -> list[Row]:
        """The split's rows, checked (none whose prompt_key is in split.exclude_prompts where
        the task generates them)."""

    # ------------------------------------------------------------------ grading

    def request(self, row: Row, response: str) -> dict[str, Any]:
        """What the verifier needs to grade one response to one of its rows."""
        return row_request(row, response)

    def problem_metrics(self, row: Row, correct: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Per-problem numbers from the verdict details (verdict_details) of its correct
        samples; the evaluation reports each one's mean over the task's rows as eval/<name>."""
        return {}

    # ------------------------------------------------------------------ warm start

    def warmstart_problems(self, options: Any, exclude_prompts: set[str]) -> ProblemMaker:
        """The warm start's problems (each with a reference response), none of exclude_prompts;
        the held-out problems that decide when it stops come from the same stream. Every task
        that declares a tiny_model has them (register_task checks)."""
        raise ValueError(f"task {self.name} has no warm start (it declares no tiny_model)")

    def warmstart_training(self, options: Any, exclude_prompts: set[str],
                           problems: ProblemMaker) -> ProblemMaker:
        """The warm start's training stream: by default the problems themselves."""
        return problems

    def warmstart_exclusions(self, options: Any) -> set[str]:
        """Prompt keys the warm start must never train on besides the run's held-out splits."""
        return set()

    def warmstart_settings(self, options: Any, split: str) -> dict[str, Any]:
        """What of a split's options enters the warm start's cache key."""
        return {self.name: asdict(options)}

    def check_image_size(self, options: Any, image_size: int, key: str) -> None:
        """Raises ConfigError when the task's images are not image_size pixels a side (the
        tiny vision-language model's tower); a task without images has nothing to check."""
        return None

    # ------------------------------------------------------------------ options

    def typed_options(self, raw: Any, key: str) -> Any:
        """The options as this task's options class: an instance as it is, None as the
        defaults, a mapping (the config's data.<split>.options) converted and type-checked;
        an option the task does not declare is refused naming the key."""
        if isinstance(raw, self.options):
            return raw
        if raw is None:
            return self.options()
        if not isinstance(raw, Mapping):
            raise ConfigError(key, f"expected the options of task {self.name}, got "
                              f"{type(raw).__name__}", f"give a mapping of {_names(self.options)}")
        for option in raw:
            self._check_declared(str(option), f"{key}.{option}")
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        try:
            return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(self.options), dict(raw)))
        except OmegaConfBaseException as error:
            where = getattr(error, "full_key", "") or ""
            problem = str(getattr(error, "msg", error)).splitlines()[0]  # not OmegaConf's details
            raise ConfigError(f"{key}.{where}".rstrip("."), problem) from None

    def _check_declared(self, option: str, key: str) -> None:
        declared = _names(self.options)
        if option in declared:
            return
        owners = [task.name for task in tasks() if option in _names(task.options)]
        nearest = difflib.get_close_matches(option, declared, n=1)
        fix = f"did you mean {key.rpartition('.')[0]}.{nearest[0]}?" if nearest else \
            f"its options are {', '.join(declared)}"
        problem = f"is not an option of task {self.name}"
        if owners:
            problem += f" (it is one of {', '.join(owners)})"
        raise ConfigError(key, problem, fix)


def _names(options: type) -> list[str]:
    return [field.name for field in fields(options)]


_TASKS: dict[str, Task] = {}
_BY_ROW_SOURCE: dict[str, Task] = {}
_discovered = False


def register_task(task_class: type[Task]) -> type[Task]:
    """Registers a task (a class decorator); its declaration is checked here."""
    name = getattr(task_class, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{task_class.__name__}: a task declares its name (data.<split>.source)")
    try:
        task = task_class()
    except TypeError as error:  # an abstract method left out (rows)
        raise ValueError(f"task {name}: {error}") from None
    if name in _TASKS:
        raise ValueError(f"task {name!r} is registered twice ({type(_TASKS[name]).__name__}, "
                         f"{task_class.__name__})")
    options = getattr(task_class, "options", None)
    if not (isinstance(options, type) and is_dataclass(options) and callable(getattr(options, "check", None))):
        raise ValueError(f"task {name}: options must be a dataclass with a check(key) method")
    if getattr(task_class, "verifier", "") not in (*VERIFIER_KINDS, None):
        raise ValueError(f"task {name}: verifier must be one of {VERIFIER_KINDS} or None")
    if task.tiny_model not in (*TINY_MODELS, None):
        raise ValueError(f"task {name}: tiny_model must be one of {TINY_MODELS} or None")
    if task.tiny_model is not None and task_class.warmstart_problems is Task.warmstart_problems:
        raise ValueError(f"task {name}: a task the tiny {task.tiny_model} model learns declares "
                         "its warm start's problems (warmstart_problems)")
    if task.row_source in _BY_ROW_SOURCE:
        raise ValueError(f"task {name}: task {_BY_ROW_SOURCE[task.row_source].name} already "
                         f"makes rows of data_source {task.row_source!r}")
    _TASKS[name] = task
    if task.row_source is not None:
        _BY_ROW_SOURCE[task.row_source] = task
    return task_class


def _discover() -> None:
    """Imports every module of riskpo/data/tasks/ once (each registers its tasks)."""
    global _discovered
    if _discovered:
        return
    package = importlib.import_module(TASKS_PACKAGE)
    for module in sorted(info.name for info in pkgutil.iter_modules(package.__path__)):
        importlib.import_module(f"{TASKS_PACKAGE}.{module}")
    _discovered = True


def tasks() -> list[Task]:
    """Every registered task, by name."""
    _discover()
    return [_TASKS[name] for name in sorted(_TASKS)]


def task_named(name: str, key: str = "data.<split>.source") -> Task:
    """The task registered as `name`; ConfigError naming `key` and the nearest name if none."""
    _discover()
    if name in _TASKS:
        return _TASKS[name]
    nearest = difflib.get_close_matches(str(name), list(_TASKS), n=1)
    raise ConfigError(key, f"{name!r} is not a known task", (f"did you mean {nearest[0]}? " if nearest
                      else "") + f"known: {', '.join(sorted(_TASKS))}")


def tiny_model_tasks(tiny_model: str) -> list[str]:
    """The names of the tasks the tiny model of this kind ("text" or "vision") can be
    warm-started on (each task's tiny_model)."""
    return [task.name for task in tasks() if task.tiny_model == tiny_model]


def task_of_row(row: Row) -> Task | None:
    """The task that makes rows of this row's data_source (wherever the row was read from);
    None for rows of no registered task, graded by their shape (row_request)."""
    _discover()
    return _BY_ROW_SOURCE.get(row.data_source)


def verification_request(row: Row, response: str) -> dict[str, Any]:
    """What a verifier needs to grade `response` to `row`: as the row's task asks, else as the
    row's shape says (row_request)."""
    task = task_of_row(row)
    return task.request(row, response) if task is not None else row_request(row, response)


def row_request(row: Row, response: str) -> dict[str, Any]:
    """The verification request of a row in the verl format: a code row's tests travel whole
    (their `prefix` included: the code verifier takes the program out of the response and puts
    the prefix before it); a math row's reference answer and where the answer is
    (extra_info.answer_format, boxed unless the row says)."""
    if row.verifier == "code":
        return {"kind": "code", "tests": dict(row.tests or {}), "response": response,
                "data_source": row.data_source}
    return {"kind": "math", "response": response, "ground_truth": row.ground_truth,
            "data_source": row.data_source,
            "answer_format": row.extra_info.get("answer_format", "boxed")}


class GeneratedTask(Task):
    """A task whose rows and warm-start problems are one seeded stream of problems: it states
    `problem` (one problem from the stream's random generator) and `settings_key`, the name its
    options enter the warm start's cache key under."""

    settings_key: ClassVar[str]

    @abc.abstractmethod
    def problem(self, rng: random.Random, options: Any) -> SyntheticProblem:
        """One problem, drawn with rng, with its reference response."""

    def check(self, options: Any, split: SplitRequest, key: str) -> None:
        check_generated_size(split, key)
        options.check(f"{key}.options")

    def rows(self, options: Any, split: SplitRequest) -> list[Row]:
        return generate_rows(lambda rng: self.problem(rng, options),
                             generated_size(split, self.name), split.seed, split.exclude_prompts)

    def warmstart_problems(self, options: Any, exclude_prompts: set[str]) -> ProblemMaker:
        return lambda rng: self.problem(rng, options)

    def warmstart_settings(self, options: Any, split: str) -> dict[str, Any]:
        return {self.settings_key: asdict(options)}


def check_generated_size(split: SplitRequest, key: str) -> None:
    """A generated split needs a number of rows to make."""
    require(split.size is not None and split.size >= 1, f"{key}.size",
            "a generated dataset needs a number of rows to make", "e.g. 1000")


def generated_size(split: SplitRequest, task: str) -> int:
    """The number of rows a generated split makes (ValueError when it names none)."""
    if split.size is None or split.size < 1:
        raise ValueError(f"{task}: data.{split.split}.size must be a positive number of rows "
                         f"to generate, got {split.size}")
    return split.size
