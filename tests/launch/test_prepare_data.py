"""prepare_data on small local files shaped like GSM8K, MATH, DAPO-Math-17k and AIME 2024."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from launch import prepare_data

GSM8K = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
    {"question": "A farm sells 1,200 eggs twice.", "answer": "2*1200=2400\n#### 2,400"},
]
MATH = [
    {"problem": "Compute $\\frac{1}{2}+\\frac{1}{3}$.", "level": "Level 1", "type": "Algebra",
     "solution": "We get $\\boxed{\\frac{5}{6}}$."},
    {"problem": "Simplify.", "level": "Level 3", "type": "Algebra",
     "solution": "First $\\boxed{1}$, then finally $\\boxed{x^{2}+\\sqrt{y_{1}}}$."},
]
DAPO_PROMPT = [{"content": "Solve: 1+1. The last line should be Answer: $Answer", "role": "user"}]
DAPO = [
    {"data_source": "math_dapo", "prompt": DAPO_PROMPT, "ability": "MATH",
     "reward_model": {"ground_truth": "2", "style": "rule-lighteval/MATH_v2"},
     "extra_info": {"index": "uuid-a"}},
] * 3 + [
    {"data_source": "math_dapo", "prompt": [{"content": "Solve: 2+3.", "role": "user"}],
     "ability": "MATH", "reward_model": {"ground_truth": "5", "style": "rule-lighteval/MATH_v2"},
     "extra_info": {"index": "uuid-b"}},
]
AIME = [{"id": 60, "problem": "Find $x$ such that ...", "solution": "...", "answer": "204",
         "url": "https://example.invalid", "year": "2024"}]


def _write_parquet(records: list[dict], path: Path) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def _write_jsonl(records: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _read_parquet(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _assert_row_shape(row: dict) -> None:
    assert set(row) >= {"prompt", "data_source", "reward_model", "extra_info"}
    assert row["reward_model"]["style"] == "rule"
    assert isinstance(row["reward_model"]["ground_truth"], str)
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"]


def test_gsm8k_from_local_parquet(tmp_path: Path) -> None:
    source = _write_parquet(GSM8K, tmp_path / "gsm8k.parquet")
    written = prepare_data.prepare("gsm8k", tmp_path / "out", str(source), ["train"],
                                   cache_dir=tmp_path / "cache")
    rows = _read_parquet(written["train"])
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["7", "2400"]
    for row in rows:
        _assert_row_shape(row)
        assert "\\boxed{}" in row["prompt"][0]["content"]
    assert rows[0]["extra_info"]["question"] == GSM8K[0]["question"]


def test_math_takes_the_last_boxed_answer_with_nested_braces(tmp_path: Path) -> None:
    source = _write_jsonl(MATH, tmp_path / "math.jsonl")
    written = prepare_data.prepare("math", tmp_path / "out", str(source), ["test"], "jsonl",
                                   tmp_path / "cache")
    rows = [json.loads(line) for line in written["test"].read_text().splitlines()]
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["\\frac{5}{6}", "x^{2}+\\sqrt{y_{1}}"]
    assert rows[1]["extra_info"]["level"] == "Level 3"
    for row in rows:
        _assert_row_shape(row)


def test_dapo_keeps_its_prompt_and_drops_repeats(tmp_path: Path) -> None:
    source = _write_parquet(DAPO, tmp_path / "dapo.parquet")
    written = prepare_data.prepare("dapo_math_17k", tmp_path / "out", str(source),
                                   cache_dir=tmp_path / "cache")
    rows = _read_parquet(written["train"])
    assert len(rows) == 2
    assert rows[0]["prompt"] == DAPO_PROMPT
    assert rows[0]["extra_info"]["original_index"] == "uuid-a"
    assert [r["reward_model"] for r in rows] == [
        {"style": "rule", "ground_truth": "2"}, {"style": "rule", "ground_truth": "5"}]


def test_aime_from_a_local_dataset_directory(tmp_path: Path) -> None:
    dataset_dir = tmp_path / "aime_2024"
    (dataset_dir / "data").mkdir(parents=True)
    _write_parquet(AIME, dataset_dir / "data" / "train-00000-of-00001.parquet")
    written = prepare_data.prepare("aime_2024", tmp_path / "out", str(dataset_dir),
                                   cache_dir=tmp_path / "cache")
    (row,) = _read_parquet(written["train"])
    _assert_row_shape(row)
    assert row["reward_model"]["ground_truth"] == "204"
    assert row["extra_info"]["id"] == 60


def test_a_record_without_the_expected_column_names_it(tmp_path: Path) -> None:
    source = _write_jsonl([{"question": "q", "solution": "#### 1"}], tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match=r"record 0: .*'answer'"):
        prepare_data.prepare("gsm8k", tmp_path / "out", str(source), cache_dir=tmp_path / "c")


def test_answer_extraction_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="####"):
        prepare_data.gsm8k_answer("no final line")
    with pytest.raises(ValueError, match="boxed"):
        prepare_data.last_boxed("no box here")
    with pytest.raises(ValueError, match="unbalanced"):
        prepare_data.last_boxed("\\boxed{1")


def test_cli_rejects_unknown_dataset_and_reports_bad_input(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        prepare_data.main(["mbpp"])
    bad = _write_jsonl([{"problem": "p", "solution": "none"}], tmp_path / "m.jsonl")
    args = ["math", "--source", str(bad), "--output-dir", str(tmp_path),
            "--cache-dir", str(tmp_path / "cache")]
    assert prepare_data.main(args) == 1
    assert "boxed" in capsys.readouterr().err
