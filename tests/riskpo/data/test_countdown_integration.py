"""The Countdown task wired into a run: its splits through the data config, the checks that keep
the splits of a run from one stream, the warm start's problems (any correct expression counts),
what the driver sends the verifiers, and the evaluation's distinct solutions and per-kind
pass@k."""

from __future__ import annotations

import hashlib
import random

import pytest

from launch.config import compose_config, validate
from riskpo.data.expressions import solves
from riskpo.data.loaders import DataConfig, DatasetConfig, load_dataset
from riskpo.data.registry import task_named, verification_request
from riskpo.data.tasks.countdown import CountdownOptions
from riskpo.loop.evaluation import evaluate
from riskpo.messages import Completion
from riskpo.options import ConfigError

SMALL = CountdownOptions(validation_size=20, heldout_size=20)
COUNTDOWN = DatasetConfig(source="synthetic_countdown", size=None, options=SMALL)


def test_the_splits_come_from_one_stream_and_never_share_a_problem():
    train = load_dataset(DatasetConfig(source="synthetic_countdown", size=60, options=SMALL), "train")
    validation = load_dataset(COUNTDOWN, "validation")
    heldout = load_dataset(COUNTDOWN, "eval")  # the run's held-out split is the task's
    assert (len(train), len(validation), len(heldout)) == (60, 20, 20)
    prompts = [{row.prompt_key for row in rows} for rows in (train, validation, heldout)]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert sum(row.extra_info["kind"] == "rare_only" for row in heldout) == 10  # eval_rare_only_fraction
    assert load_dataset(COUNTDOWN, "eval") == heldout  # seeded


@pytest.mark.parametrize(("overrides", "key"), [
    (["data.train.options.seed=3"], "data.eval.options"),
    (["data.validation.options.heldout_size=30"], "data.validation.options"),
    (["data.eval.size=50"], "data.eval.size"),
    (["data.validation.size=50"], "data.validation.size"),
    (["data.train.size=null"], "data.train.size"),
    (["data.train.options.num_numbers=9"], "data.train.options.num_numbers"),
    (["data.train.options.num_number=4"], "data.train.options.num_number"),
    (["data.eval.options.min_digits=4"], "data.eval.options.min_digits"),
])
def test_countdown_data_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(["data=countdown", *overrides]))
    assert error.value.key == key


def test_an_option_of_another_task_is_refused_naming_its_task():
    with pytest.raises(ConfigError, match="synthetic_arithmetic") as error:
        validate(compose_config(["data=countdown", "data.eval.options.min_digits=4"]))
    assert "not an option of task synthetic_countdown" in str(error.value)
    with pytest.raises(ConfigError, match="did you mean data.train.options.num_numbers") as error:
        validate(compose_config(["data=countdown", "data.train.options.num_number=4"]))


@pytest.mark.slow
def test_the_warm_start_accepts_any_correct_expression_and_never_sees_held_out_rows():
    heldout = load_dataset(COUNTDOWN, "eval")
    excluded = {row.prompt_key for row in heldout}
    make = task_named("synthetic_countdown").warmstart_problems(SMALL, excluded)
    rng = random.Random(0)
    problems = [make(rng) for _ in range(300)]
    assert not {p.row.prompt_key for p in problems} & excluded
    for problem in problems[:30]:
        truth = problem.row.reward_model["ground_truth"]
        assert solves(problem.reference_response, truth["numbers"], truth["target"])
        assert problem.solved_by(problem.reference_response)
        assert not problem.solved_by(problem.reference_response + "+1")
    rare = sum(p.reference_response.startswith("(") for p in problems)
    assert 10 <= rare <= 60  # the rare template, about 10% of 300
    written = repr([(problem.row.to_dict(), problem.reference_response) for problem in problems])
    assert hashlib.sha256(written.encode()).hexdigest()[:16] == "e9f25d44e8aeced6"  # as at a45c989


class FakeEngine:
    """Answers every prompt with the same few expressions (some right, some wrong)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    def generate(self, prompts, params):
        return [[Completion([1], [-0.1], "stop", self.answers[p.text][j % len(self.answers[p.text])])
                 for j in range(params.n)] for p in prompts]


class VerifierInProcess:
    def __init__(self) -> None:
        from workers.verifier.countdown import CountdownVerifier

        self.verifier = CountdownVerifier()

    def verify_batch(self, rows):
        return self.verifier.verify_many(rows, deadline=float("inf"))


def test_evaluation_counts_distinct_correct_expressions_and_pass_at_k_by_kind():
    rows = load_dataset(COUNTDOWN, "eval")[:4]
    answers = {}
    for row in rows:
        truth = row.reward_model["ground_truth"]
        request = verification_request(row, "1+1")
        assert request == {"kind": "math", "grader": "countdown", "response": "1+1",
                           "data_source": "countdown", "ground_truth": truth}
        solutions = sorted(_solutions(truth))[:2]
        answers[row.prompt] = [solutions[0], solutions[-1], "1*1"]  # 1 or 2 distinct right, 1 wrong
    data = DataConfig(eval=COUNTDOWN, eval_samples=6, eval_pass_k=[1, 6], eval_greedy=False)
    from riskpo.messages import SamplingConfig

    metrics = evaluate(FakeEngine(answers), VerifierInProcess(), rows, data, SamplingConfig(), seed=0)
    expected = sum(len({a for a in answers[row.prompt][:2]}) for row in rows) / len(rows)
    assert metrics["eval/distinct_correct"] == pytest.approx(expected)
    assert metrics["eval/pass@6"] == 1.0 and metrics["eval/pass@1"] == pytest.approx(4 / 6)
    kinds = {row.extra_info["kind"] for row in rows}
    for kind in kinds:
        assert metrics[f"eval/{kind}/pass@6"] == 1.0


def _solutions(truth: dict) -> set[str]:
    from riskpo.data.expressions import all_solutions

    return all_solutions(truth["numbers"], truth["target"])
