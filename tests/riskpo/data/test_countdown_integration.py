"""The Countdown task wired into a run: its splits through the data config, the checks that keep
the splits of a run from one stream, the warm start's problems (any correct expression counts),
what the driver sends the verifiers, and the evaluation's distinct solutions and per-kind
pass@k."""

from __future__ import annotations

import random

import pytest

from launch.config import compose_config, validate
from riskpo.data.countdown import CountdownConfig, solves
from riskpo.data.loaders import DataConfig, DatasetConfig, load_dataset
from riskpo.data.synthetic import problem_maker
from riskpo.loop.evaluation import evaluate
from riskpo.messages import Completion, verification_request
from riskpo.options import ConfigError

SMALL = CountdownConfig(validation_size=20, heldout_size=20)


def test_the_splits_come_from_one_stream_and_never_share_a_problem():
    train = load_dataset(DatasetConfig(source="synthetic_countdown", split="train", size=60, countdown=SMALL))
    validation = load_dataset(DatasetConfig(source="synthetic_countdown", split="validation", size=None,
                                            countdown=SMALL))
    heldout = load_dataset(DatasetConfig(source="synthetic_countdown", split="heldout", size=None,
                                         countdown=SMALL))
    assert (len(train), len(validation), len(heldout)) == (60, 20, 20)
    prompts = [{row.prompt_key for row in rows} for rows in (train, validation, heldout)]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert sum(row.extra_info["kind"] == "rare_only" for row in heldout) == 10  # eval_rare_only_fraction
    assert load_dataset(DatasetConfig(source="synthetic_countdown", split="heldout", size=None,
                                      countdown=SMALL)) == heldout  # seeded


@pytest.mark.parametrize(("overrides", "key"), [
    (["data.train.countdown.seed=3"], "data.eval.countdown"),
    (["data.eval.split=train"], "data.eval.split"),
    (["data.eval.size=50"], "data.eval.size"),
    (["data.train.countdown.num_numbers=9"], "data.train.countdown.num_numbers"),
    (["data.eval.split=test"], "data.eval.split"),
])
def test_countdown_data_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(["data=countdown", *overrides]))
    assert error.value.key == key


def test_the_warm_start_accepts_any_correct_expression_and_never_sees_held_out_rows():
    heldout = load_dataset(DatasetConfig(source="synthetic_countdown", split="heldout", size=None,
                                         countdown=SMALL))
    excluded = {row.prompt_key for row in heldout}
    make = problem_maker("synthetic_countdown", None, None, SMALL, excluded)
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
    rows = load_dataset(DatasetConfig(source="synthetic_countdown", split="heldout", size=None,
                                      countdown=SMALL))[:4]
    answers = {}
    for row in rows:
        truth = row.reward_model["ground_truth"]
        request = verification_request(row, "1+1")
        assert request["kind"] == "countdown" and request["ground_truth"] == truth
        solutions = sorted(_solutions(truth))[:2]
        answers[row.prompt] = [solutions[0], solutions[-1], "1*1"]  # 1 or 2 distinct right, 1 wrong
    data = DataConfig(eval=DatasetConfig(source="synthetic_countdown", split="heldout", size=None,
                                         countdown=SMALL),
                      eval_samples=6, eval_pass_k=[1, 6], eval_greedy=False)
    from riskpo.messages import SamplingConfig

    metrics = evaluate(FakeEngine(answers), VerifierInProcess(), rows, data, SamplingConfig(), seed=0)
    expected = sum(len({a for a in answers[row.prompt][:2]}) for row in rows) / len(rows)
    assert metrics["eval/distinct_correct"] == pytest.approx(expected)
    assert metrics["eval/pass@6"] == 1.0 and metrics["eval/pass@1"] == pytest.approx(4 / 6)
    kinds = {row.extra_info["kind"] for row in rows}
    for kind in kinds:
        assert metrics[f"eval/{kind}/pass@6"] == 1.0


def _solutions(truth: dict) -> set[str]:
    from riskpo.data.countdown import all_solutions

    return all_solutions(truth["numbers"], truth["target"])
