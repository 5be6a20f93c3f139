"""The task registry: every registered task declares what it must, loads rows for a small size
and turns each row into a request of the verifier kind it declares (graded by that verifier in
the slow lane); a row read from a file is graded as its task grades it; the options are typed
per task and refused naming the key; the shipped configs' rows, requests and warm-start
problems are those of commit a45c989 (before the registry)."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from launch.config import compose_config, to_dataclass, validate
from riskpo.data.loaders import DatasetConfig, load_dataset, load_splits
from riskpo.data.registry import (
    TINY_MODELS,
    VERIFIER_KINDS,
    Task,
    register_task,
    task_named,
    task_of_row,
    tasks,
    verification_request,
)
from riskpo.data.rows import Row
from riskpo.options import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
# options that keep a task's rows small here (a task whose defaults are small needs no entry)
SMALL_OPTIONS = {
    "synthetic_countdown": {"validation_size": 4, "heldout_size": 4, "num_numbers": 4},
    "jsonl": {"files": [str(FIXTURES / "math_rows.jsonl"), str(FIXTURES / "code_rows.jsonl")]},
}
MATH_GRADERS = ("countdown",)  # workers/verifier/ray_pool.py: what the math actors also run


@pytest.fixture(scope="module")
def parquet_rows(tmp_path_factory) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("parquet") / "rows.parquet"
    rows = [{"prompt": f"{i}+1=", "data_source": "local/sums", "extra_info": {"i": i},
             "reward_model": {"style": "rule", "ground_truth": str(i + 1)}} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def small_split(task: Task, split: str, parquet: str) -> DatasetConfig:
    options = {"parquet": {"files": [parquet]}}.get(task.name, SMALL_OPTIONS.get(task.name))
    fixed = split != "train" and task.name == "synthetic_countdown"  # its held-out sizes
    return DatasetConfig(source=task.name, size=None if fixed else 3, seed=1, options=options)


@pytest.mark.parametrize("task", tasks(), ids=lambda task: task.name)
def test_every_task_declares_what_it_must(task, parquet_rows):
    assert isinstance(task.name, str) and task_named(task.name) is task
    assert is_dataclass(task.options) and callable(task.options.check)
    options = task.typed_options(small_split(task, "train", parquet_rows).options, "o")
    options.check("data.train.options")  # the defaults (with files, for a file task) check
    assert task.verifier in (*VERIFIER_KINDS, None) and task.tiny_model in (*TINY_MODELS, None)
    assert task.row_source is None or task_of_row(Row("p", task.row_source)) is task
    if task.tiny_model is not None:  # a warm start: problems with reference responses
        problem = task.warmstart_problems(options, set())(random.Random(0))
        assert problem.solved_by(problem.reference_response)
        assert task_of_row(problem.row) is task


@pytest.mark.parametrize("task", tasks(), ids=lambda task: task.name)
@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_task_loads_rows_and_makes_requests_of_its_verifier_kind(task, split, parquet_rows):
    dataset = small_split(task, split, parquet_rows)
    dataset.check(f"data.{split}", split)
    rows = load_dataset(dataset, split)
    assert rows and all(isinstance(row, Row) for row in rows)
    assert load_dataset(dataset, split) == rows  # seeded
    for row in rows:
        request = verification_request(row, "12")
        assert request["response"] == "12" and request["kind"] in VERIFIER_KINDS
        assert request["kind"] == (task.verifier or row.verifier)
        assert request.get("grader") in (None, *MATH_GRADERS)
        assert request["kind"] == "math" or "grader" not in request
        json.dumps(request)  # plain data: it travels to the verifier actors


@pytest.mark.slow
@pytest.mark.parametrize("task", tasks(), ids=lambda task: task.name)
def test_every_tasks_requests_are_accepted_by_its_verifier(task, parquet_rows):
    """The requests go through the verifier actor of their kind (the pool's routing included):
    none comes back as bad input."""
    from workers.verifier import results as R
    from workers.verifier.ray_pool import VerifierActor, VerifierLimits

    rows = load_dataset(small_split(task, "eval", parquet_rows), "eval")
    requests = [verification_request(row, response) for row in rows for response in ("12", "")]
    by_kind: dict[str, list[dict]] = {}
    for request in requests:
        by_kind.setdefault(request["kind"], []).append(request)
    for kind, mine in by_kind.items():
        actor = VerifierActor(kind, VerifierLimits(code_slots_per_actor=1))
        try:
            if kind == "math":
                results = actor._verify_math_rows(mine, float("inf"))
            else:
                results = [actor.verifier.verify(request, float("inf")) for request in mine]
        finally:
            _close(actor)
        assert all(result["status"] not in (R.BAD_INPUT, R.INFRA_ERROR) for result in results), results


def _close(actor) -> None:
    verifier = actor.verifier
    if hasattr(verifier, "close"):
        verifier.close()
    executor = getattr(verifier, "executor", None)
    if executor is not None:
        executor.close()
    actor.threads.shutdown()


def test_a_row_from_a_file_is_graded_as_its_task_grades_it():
    truth = {"target": 26, "numbers": [3, 5, 7]}
    countdown = Row("3,5,7=26:", "countdown", reward_model={"style": "rule", "ground_truth": truth})
    assert verification_request(countdown, "3*7+5") == {
        "kind": "math", "grader": "countdown", "response": "3*7+5", "data_source": "countdown",
        "ground_truth": truth}
    other = Row("q", "openai/gsm8k", reward_model={"style": "rule", "ground_truth": "5"},
                extra_info={"answer_format": "gsm8k"})
    assert task_of_row(other) is None
    assert verification_request(other, "#### 5") == {
        "kind": "math", "response": "#### 5", "ground_truth": "5", "data_source": "openai/gsm8k",
        "answer_format": "gsm8k"}


def test_a_declaration_that_cannot_work_is_refused_at_registration():
    from riskpo.data.tasks.arithmetic import ArithmeticOptions

    class Rows(Task):
        name, options, verifier = "plain", ArithmeticOptions, "math"

        def rows(self, options, split):
            return []

    class Twice(Rows):
        name = "synthetic_arithmetic"

    class Poetry(Rows):
        verifier = "poetry"

    class NoCheck(Rows):
        options = dict

    class NoWarmStart(Rows):
        tiny_model = "text"

    class NoRows(Task):
        name, options, verifier = "plain", ArithmeticOptions, "math"

    tasks()  # the shipped tasks are registered
    for task_class, problem in ((Twice, "registered twice"), (Poetry, "verifier must be"),
                                (NoCheck, "options must be a dataclass"),
                                (NoWarmStart, "declares its warm start's problems"),
                                (NoRows, "abstract method rows")):
        with pytest.raises(ValueError, match=problem):
            register_task(task_class)
    assert task_named("synthetic_arithmetic").options is ArithmeticOptions
    with pytest.raises(ConfigError):
        task_named("plain")


def test_an_unknown_task_is_named_before_what_the_tiny_model_knows():
    with pytest.raises(ConfigError, match="did you mean synthetic_arithmetic") as error:
        validate(compose_config(["data.train.source=synthetic_arithmetc"]))
    assert error.value.key == "data.train.source"


@pytest.mark.parametrize(("overrides", "key", "says"), [
    (["data.train.source=synthetic_arithmetc"], "data.train.source",
     "did you mean synthetic_arithmetic"),
    (["data.train.options.min_digits=abc"], "data.train.options.min_digits", "min_digits"),
    (["data.eval.options.min_digit=2"], "data.eval.options.min_digit",
     "did you mean data.eval.options.min_digits"),
    (["data.train.options.num_numbers=4"], "data.train.options.num_numbers",
     "one of synthetic_countdown"),
    (["data.train.options.min_digits=5", "data.train.options.max_digits=4"],
     "data.train.options.min_digits", "min_digits <= max_digits"),
    (["data.train.options=[1]"], "data.train.options", "expected the options"),
    (["data.train.arithmetic.min_digits=4"], "data.train.arithmetic.min_digits",
     "data.train.options.min_digits"),
    (["data.eval.files=[x.jsonl]"], "data.eval.files", "data.eval.options.files"),
    (["data=code", "data.train.size=null"], "data.train.size", "number of rows"),
    (["data.train.source=jsonl", "data.train.options.min_digits=3"],
     "data.train.options.min_digits", "not an option of task jsonl"),
])
def test_task_options_are_typed_and_refused_naming_the_key(overrides, key, says):
    with pytest.raises(ConfigError) as error:
        to_dataclass(compose_config(overrides)).data.check("data")
    assert error.value.key == key and says in str(error.value)


def test_a_split_knows_its_options_class():
    run = validate(compose_config(["data=code", "data.train.options.coef_range=7"]))
    assert run.data.train.options == task_named("synthetic_code").options(coef_range=7)
    assert [f.name for f in fields(run.data.eval.options)] == ["forms", "coef_range",
                                                               "num_examples", "num_hidden_cases"]


# --------------------------------------------------------------- the values of a45c989

# data config -> split -> (rows, digest of the rows, digest of their requests to "12"), computed
# at a45c989 with the old keys (data.<split>.countdown.*); a Countdown request's kind was
# "countdown" there and is "math" with grader "countdown" now (compared as it was)
SMALL_CONFIGS = {
    "arithmetic": ["data=arithmetic", "data.train.size=40", "data.eval.size=10"],
    "arithmetic_with_validation": ["data=arithmetic_with_validation", "data.train.size=40",
                                   "data.eval.size=10", "data.validation.size=10"],
    "arithmetic_harder_eval": ["data=arithmetic_harder_eval", "data.train.size=40",
                               "data.eval.size=10", "data.validation.size=10"],
    "countdown": ["data=countdown", "data.train.size=40"] + [
        f"data.{split}.options.{knob}=20" for split in ("train", "eval", "validation")
        for knob in ("validation_size", "heldout_size")],
    "code": ["data=code", "data.train.size=40", "data.eval.size=10", "data.validation.size=10"],
    "visual": ["experiment=embedded_vlm", "data.train.size=20", "data.eval.size=5"],
}
ROWS_AT_A45C989 = {
    "arithmetic/eval": (10, "4515613af43d4d40", "94381b2fb69d5dbb"),
    "arithmetic/train": (40, "876186b170d22a38", "b79388574e774106"),
    "arithmetic_with_validation/eval": (10, "4515613af43d4d40", "94381b2fb69d5dbb"),
    "arithmetic_with_validation/train": (40, "876186b170d22a38", "b79388574e774106"),
    "arithmetic_with_validation/validation": (10, "12483d6ea4f8711f", "5d179e4ac3505026"),
    "arithmetic_harder_eval/eval": (10, "b6cf043504adae81", "cacfe16aa68310cd"),
    "arithmetic_harder_eval/train": (40, "876186b170d22a38", "b79388574e774106"),
    "arithmetic_harder_eval/validation": (10, "c8462ed2e5b114a3", "d1e05610d895bcfa"),
    "countdown/eval": (20, "cec98f5ee67a2a7d", "55320d5c8bbd5350"),
    "countdown/train": (40, "62df2622f939c2c1", "684024a00eee10c5"),
    "countdown/validation": (20, "07e1798781efb1ec", "c3515bee93814947"),
    "code/eval": (10, "8bb0ba90daca43d6", "9e065ffb4ef1ec69"),
    "code/train": (40, "0f051cc0540a6fdb", "905a0cba84fcf015"),
    "code/validation": (10, "9162c87b20c49378", "90cbbd9b38d64683"),
    "visual/eval": (5, "1a746c05971ef5b6", "08a9a818754cbbfe"),
    "visual/train": (20, "f03fd1dd62b44e9d", "dc7184f41c2b76e4"),
}
# data config -> (held-out prompts kept from the warm start, digest of its first 16 held-out
# problems and 32 training problems), at a45c989 (Countdown's: test_countdown_integration.py)
WARM_START_CONFIGS = {
    "arithmetic": (["data=arithmetic_with_validation", "data.eval.size=20",
                    "data.validation.size=20"], 40, "ec5f9167e75b0542"),
    "code": (["data=code", "data.eval.size=20", "data.validation.size=20"], 40, "6cd4ff4397214dee"),
    "visual": (["experiment=embedded_vlm", "data.eval.size=20"], 20, "dfceb186d08fbfb1"),
}


def _digest(value: object) -> str:
    return hashlib.sha256(value.encode() if isinstance(value, str) else repr(value).encode()
                          ).hexdigest()[:16]


def _as_at_a45c989(request: dict) -> dict:
    if request.get("grader") == "countdown":
        return {key: value for key, value in request.items() if key != "grader"} | {"kind": "countdown"}
    return request


@pytest.mark.parametrize("name", SMALL_CONFIGS)
def test_rows_and_requests_are_those_of_a45c989(name):
    splits = load_splits(validate(compose_config(SMALL_CONFIGS[name])).data)
    assert {f"{name}/{split}" for split in splits} == {key for key in ROWS_AT_A45C989
                                                       if key.startswith(f"{name}/")}
    for split, rows in splits.items():
        requests = [_as_at_a45c989(verification_request(row, "12")) for row in rows]
        assert (len(rows), _digest([row.to_dict() for row in rows]),
                _digest(json.dumps(requests, sort_keys=True))) == ROWS_AT_A45C989[f"{name}/{split}"]


@pytest.mark.parametrize("name", WARM_START_CONFIGS)
def test_warm_start_problems_are_those_of_a45c989(name):
    from riskpo.models import warmstart as W

    overrides, excluded_count, digest = WARM_START_CONFIGS[name]
    run = validate(compose_config(overrides))
    data, settings = run.data, run.model.warmstart
    excluded = W._evaluation_prompts(data)
    task, options = data.train.task, data.train.options
    problems = task.warmstart_problems(options, excluded)
    held_out = W._held_out_problems(problems, 16, settings.seed + 1, excluded)
    never = excluded | {problem.row.prompt_key for problem in held_out}
    training = W._training_batch(task.warmstart_training(options, never, problems),
                                 random.Random(settings.seed), never, 32)
    assert len(excluded) == excluded_count
    assert _digest([(p.row.to_dict(), p.reference_response) for p in held_out + training]) == digest
