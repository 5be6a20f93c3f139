"""The generated word problems (riskpo/data/word_problems.py), the pilot's preparation
(launch/prepare_pilot.py) and its configs (conf/data/word_problems.yaml,
conf/experiment/smollm2-pilot.yaml)."""

from __future__ import annotations

import json
import random
import re

import pytest

from launch.config import compose_config, validate
from launch.prepare_pilot import main as prepare_pilot
from launch.prepare_pilot import parse_args, prepare_data
from riskpo.data.loaders import DatasetConfig, load_dataset
from riskpo.data.word_problems import (
    PEOPLE,
    WordProblemConfig,
    word_problem,
    word_problem_rows,
    word_problem_splits,
    write_splits,
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
    rows = word_problem_rows(WordProblemConfig(), 400, seed=3)
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


def test_two_step_answers_are_positive_whole_numbers_of_two_operations():
    rows = word_problem_rows(WordProblemConfig(steps=[2]), 200, seed=0)
    for row in rows:
        assert row.extra_info == {"answer_format": "final_number", "steps": 2, "operation": "two_step"}
        assert len(numbers_in(row.prompt)) == 3 and int(row.ground_truth) > 0


def test_names_items_and_numbers_vary_and_the_stream_is_seeded():
    config = WordProblemConfig(max_number=50)
    rows = word_problem_rows(config, 300, seed=1)
    names = {word for row in rows for word in row.prompt.replace(".", " ").split() if word in NAMES}
    assert len(names) >= 20
    assert len({int(row.ground_truth) for row in rows}) >= 40
    assert len({row.prompt for row in rows}) == 300
    assert word_problem_rows(config, 300, seed=1) == rows
    assert word_problem_rows(config, 300, seed=2) != rows


def test_splits_never_share_a_prompt_and_round_trip_through_jsonl(tmp_path):
    config = WordProblemConfig(answer_format="boxed")
    train, held_out = word_problem_splits(config, 500, 100)
    assert not {row.prompt for row in train} & {row.prompt for row in held_out}
    paths = write_splits(tmp_path, config, 500, 100)
    loaded = load_dataset(DatasetConfig(source="jsonl", files=[str(paths["train"])], size=None))
    assert [row.to_dict() for row in loaded] == [row.to_dict() for row in train]
    assert json.loads((tmp_path / "settings.json").read_text())["answer_format"] == "boxed"


def test_a_task_whose_answers_always_repeat_in_the_question_is_refused():
    with pytest.raises(ValueError, match="raise them"):
        word_problem(random.Random(0), WordProblemConfig(operations=["divide"], max_factor=2))


@pytest.mark.parametrize(("changes", "key"), [
    ({"steps": [3]}, "wp.steps"), ({"operations": ["modulo"]}, "wp.operations"),
    ({"max_number": 2}, "wp.max_number"), ({"answer_format": "latex"}, "wp.answer_format"),
])
def test_bad_knobs_name_their_key(changes, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        WordProblemConfig(**changes).check("wp")


def test_prepare_writes_once_and_rewrites_when_the_settings_change(tmp_path, capsys):
    args = parse_args(["--train-size", "50", "--eval-size", "10"])
    prepare_data(tmp_path, args)
    first = (tmp_path / "word_problems" / "train.jsonl").read_text()
    prepare_data(tmp_path, args)
    assert "already written" in capsys.readouterr().out
    prepare_data(tmp_path, parse_args(["--train-size", "50", "--eval-size", "10", "--seed", "4"]))
    assert (tmp_path / "word_problems" / "train.jsonl").read_text() != first


def test_the_pilot_config_reads_the_prepared_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RISKPO_CACHE", str(tmp_path))
    model_dir = tmp_path / "smollm2-135m-instruct"
    model_dir.mkdir()
    for name in ("config.json", "model.safetensors"):  # prepare skips a converted model
        (model_dir / name).write_text("{}")
    prepare_pilot(["--train-size", "40", "--eval-size", "40"])
    run = validate(compose_config(["experiment=smollm2-pilot"]))
    assert run.model.path == str(model_dir)
    assert run.data.train.files == [str(tmp_path / "word_problems" / "train.jsonl")]
    assert run.data.eval.files == [str(tmp_path / "word_problems" / "eval.jsonl")]
    assert run.rollout.engine == "vllm" and run.data.template == "chat"
    assert run.trainer.prompts_per_step % run.algorithm.options.bundle_size == 0
    assert len(load_dataset(run.data.eval)) == 40
