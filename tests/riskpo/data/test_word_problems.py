"""The word-problem task (riskpo/data/tasks/word_problems.py), the pilot's preparation
(launch/prepare_pilot.py) and its configs (conf/data/word_problems.yaml,
conf/experiment/smollm2-pilot.yaml)."""

from __future__ import annotations

import random
import re

import pytest

from launch.config import compose_config, to_dataclass, validate
from launch.prepare_pilot import main as prepare_pilot
from riskpo.data.loaders import load_splits
from riskpo.data.registry import verification_request
from riskpo.data.tasks.word_problems import (
    PEOPLE,
    WordProblemOptions,
    word_problem,
    word_problem_rows,
)
from riskpo.options import ConfigError

NAMES = {name for name, _, _ in PEOPLE}


def numbers_in(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def expected_answer(row) -> int:
    """The answer recomputed from the numbers in the question (an independent check)."""
    first, second = numbers_in(row.prompt)[:2]
    operation = row.extra_info["operation"]
    if operation == "add":
        return first + second
    if operation == "subtract":
        return first - second
    if operation == "multiply":
        return first * second
    return first // second


def test_one_step_answers_follow_from_the_question_and_never_appear_in_it():
    rows = word_problem_rows(WordProblemOptions(), 400, seed=3)
    operations = {row.extra_info["operation"] for row in rows}
    assert operations == {"add", "subtract", "multiply", "divide"}
    for row in rows:
        answer = int(row.ground_truth)
        assert answer == expected_answer(row) > 0, row.prompt
        assert answer not in numbers_in(row.prompt), row.prompt
        if row.extra_info["operation"] == "divide":
            first, second = numbers_in(row.prompt)[:2]
            assert first % second == 0
        assert row.extra_info["answer_format"] == "final_number" and row.verifier == "math"
        assert verification_request(row, "12") == {
            "kind": "math", "response": "12", "ground_truth": row.ground_truth,
            "data_source": "synthetic/word_problems", "answer_format": "final_number"}


def test_two_step_answers_are_positive_whole_numbers_of_two_operations():
    rows = word_problem_rows(WordProblemOptions(steps=[2]), 200, seed=0)
    for row in rows:
        assert row.extra_info == {"answer_format": "final_number", "steps": 2, "operation": "two_step"}
        assert len(numbers_in(row.prompt)) == 3 and int(row.ground_truth) > 0


def test_names_items_and_numbers_vary_and_the_stream_is_seeded():
    config = WordProblemOptions(max_number=50)
    rows = word_problem_rows(config, 300, seed=1)
    names = {word for row in rows for word in row.prompt.replace(".", " ").split() if word in NAMES}
    assert len(names) >= 20
    assert len({int(row.ground_truth) for row in rows}) >= 40
    assert len({row.prompt for row in rows}) == 300
    assert word_problem_rows(config, 300, seed=1) == rows
    assert word_problem_rows(config, 300, seed=2) != rows


def test_the_pilot_data_is_the_task_and_its_splits_never_share_a_prompt():
    data = to_dataclass(compose_config(["data=word_problems"])).data
    data.check("data")
    assert data.train.options == data.eval.options == WordProblemOptions()
    splits = load_splits(data)
    assert (len(splits["train"]), len(splits["eval"])) == (2000, 40)
    assert not {row.prompt for row in splits["train"]} & {row.prompt for row in splits["eval"]}
    assert splits["eval"] == word_problem_rows(WordProblemOptions(), 40, seed=1)  # the bench's


def test_a_task_whose_answers_always_repeat_in_the_question_is_refused():
    with pytest.raises(ValueError, match="raise them"):
        word_problem(random.Random(0), WordProblemOptions(operations=["divide"], max_factor=2))


@pytest.mark.parametrize(("changes", "key"), [
    ({"steps": [3]}, "wp.steps"), ({"operations": ["modulo"]}, "wp.operations"),
    ({"max_number": 2}, "wp.max_number"), ({"answer_format": "latex"}, "wp.answer_format"),
])
def test_bad_knobs_name_their_key(changes, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        WordProblemOptions(**changes).check("wp")


def test_the_pilot_config_reads_the_prepared_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RISKPO_CACHE", str(tmp_path))
    model_dir = tmp_path / "smollm2-135m-instruct"
    model_dir.mkdir()
    for name in ("config.json", "model.safetensors"):  # prepare skips a converted model
        (model_dir / name).write_text("{}")
    prepare_pilot([])
    assert "already converted" in capsys.readouterr().out
    run = validate(compose_config(["experiment=smollm2-pilot"]))
    assert run.model.path == str(model_dir)
    assert run.data.train.source == run.data.eval.source == "synthetic_word_problems"
    assert run.rollout.engine == "vllm" and run.data.template == "chat"
    assert run.trainer.prompts_per_step % run.algorithm.options.bundle_size == 0
