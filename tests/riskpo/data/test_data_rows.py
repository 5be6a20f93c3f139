"""Row loading: verl-format jsonl/parquet files, bad rows named by file/row/field, built-ins."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from riskpo.data import RowError, load_dataset, parse_row, read_rows
from riskpo.data.loaders import DatasetConfig
from riskpo.data.tasks.builtin import champ_rows, humaneval_rows
from riskpo.data.tasks.files import FilesOptions

FIXTURES = Path(__file__).parent / "fixtures"


def test_jsonl_fixture_rows_are_read_with_their_verifier():
    math_rows = read_rows(FIXTURES / "math_rows.jsonl")  # has a blank line: skipped
    assert len(math_rows) == 3
    assert math_rows[0].verifier == "math" and math_rows[0].ground_truth == "5"
    assert math_rows[2].ground_truth == "72"  # numbers become strings
    assert math_rows[2].prompt[0] == {"role": "system", "content": "Be brief."}
    code_rows = read_rows(FIXTURES / "code_rows.jsonl")
    assert [row.tests["style"] for row in code_rows] == ["call", "stdio", "assert"]
    assert all(row.verifier == "code" for row in code_rows)
    assert code_rows[1].tests["cases"][0]["stdout"] == "3\n"  # tests given as a JSON string


def test_parquet_rows_with_chat_prompts_and_code_tests(tmp_path):
    """verl parquet files hold chat prompts as lists of structs (numpy arrays when read)."""
    chat_row = read_rows(FIXTURES / "math_rows.jsonl")[0]
    pq.write_table(pa.Table.from_pylist([chat_row.to_dict()]), tmp_path / "math.parquet")
    code_row = read_rows(FIXTURES / "code_rows.jsonl")[0]
    code_dict = {**code_row.to_dict(), "extra_info": {"index": 7}}  # arrow needs a non-empty struct
    pq.write_table(pa.Table.from_pylist([code_dict]), tmp_path / "code.parquet")
    assert read_rows(tmp_path / "math.parquet") == [chat_row]
    assert read_rows(tmp_path / "code.parquet")[0].tests == code_row.tests
    both = load_dataset(DatasetConfig(source="parquet", options=FilesOptions([str(tmp_path)]), size=None))
    assert len(both) == 2


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"prompt": "1+1=", "data_source": "x", "reward_model": {"style": "rule"}}',
         "reward_model.ground_truth"),
        ('{"prompt": "", "data_source": "x", "reward_model": {"ground_truth": "2"}}', "prompt"),
        ('{"prompt": "1+1=", "reward_model": {"ground_truth": "2"}}', "data_source"),
        ('{"prompt": [{"role": "robot", "content": "hi"}], "data_source": "x", '
         '"reward_model": {"ground_truth": "2"}}', "prompt[0]"),
        ('{"prompt": "p", "data_source": "x", "tests": {"style": "call", "cases": '
         '[{"args": [1], "expected": 1}]}}', "tests.fn_name"),
        ('{"prompt": "p", "data_source": "x", "tests": {"style": "call", "fn_name": "f", '
         '"cases": [{"args": 1, "expected": 1}]}}', "tests.cases[0]"),
        ('{"prompt": "p", "data_source": "x"}', "reward_model"),
        ('{"prompt": "p", "data_source": "x", "reward_model": {"ground_truth": "1"}, '
         '"extra_info": {"answer_format": "latex"}}', "extra_info.answer_format"),
        ("{not json", "<json>"),
        # issue 13, item 4: a blank reference cannot grade anything
        ('{"prompt": "p", "data_source": "x", "reward_model": {"ground_truth": ""}}',
         "reward_model.ground_truth"),
        ('{"prompt": "p", "data_source": "x", "reward_model": {"ground_truth": "   "}}',
         "reward_model.ground_truth"),
        ('{"prompt": "p", "data_source": "x", "reward_model": {"ground_truth": "\\n\\t "}}',
         "reward_model.ground_truth"),
        ('{"prompt": "p", "data_source": "x", "reward_model": {"ground_truth": NaN}}',
         "reward_model.ground_truth"),
        ('{"prompt": "p", "data_source": "x", "reward_model": {"ground_truth": Infinity}}',
         "reward_model.ground_truth"),
        ('{"prompt": "p", "data_source": "x", "reward_model": {"ground_truth": true}}',
         "reward_model.ground_truth"),
    ],
)
def test_a_bad_row_names_file_row_and_field(tmp_path, line, field):
    good = '{"prompt": "1+1=", "data_source": "x", "reward_model": {"ground_truth": "2"}}'
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n{good}\n{line}\n{good}\n")
    with pytest.raises(RowError) as error:
        read_rows(path)
    assert (error.value.origin, error.value.row_number, error.value.field_name) == (str(path), 3, field)
    assert "row 3" in str(error.value) and str(path) in str(error.value)


def test_parse_row_rejects_non_objects():
    with pytest.raises(RowError, match="expected an object"):
        parse_row(["prompt"], "memory", 1)


def test_missing_files_and_sizes():
    with pytest.raises(FileNotFoundError, match="nothing matches"):
        load_dataset(DatasetConfig(source="jsonl", options=FilesOptions(["/no/such/*.jsonl"]), size=None))
    with pytest.raises(ValueError, match="needs files"):
        load_dataset(DatasetConfig(source="jsonl", options=FilesOptions([]), size=None))
    subset = load_dataset(DatasetConfig(source="jsonl", options=FilesOptions([str(FIXTURES / "math_rows.jsonl")]),
                                        size=2, seed=3))
    assert len(subset) == 2


def test_builtin_humaneval_and_champ():
    humaneval = humaneval_rows()
    assert len(humaneval) == 164
    first = humaneval[0]
    assert first.tests["style"] == "assert" and first.tests["entry_point"] == "has_close_elements"
    assert first.tests["prefix"] == first.prompt and "def check(candidate)" in first.tests["test"]
    assert len(load_dataset(DatasetConfig(source="humaneval", size=10, seed=1))) == 10
    champ = champ_rows()
    assert load_dataset(DatasetConfig(source="champ", size=None)) == champ
    assert len(champ) == 270
    assert champ[0].reward_model["ground_truth"] == "239"
    assert champ[0].extra_info["answer_format"] == "boxed"


MATH_ROW = '{{"prompt": "p", "data_source": "x", "reward_model": {{"ground_truth": {truth}}}}}'


@pytest.mark.parametrize(("written", "text"), [
    ("0.00001", "0.00001"), ("1e-05", "0.00001"), ("1E-5", "0.00001"), ("0.10", "0.10"),
    ("1E+3", "1000"), ("72", "72"), ("-0.0", "-0.0"), ("2.5e-10", "0.00000000025"),
    ("123456789.123456789123", "123456789.123456789123"),  # more digits than a double holds
    ("1e500", "1\\times10^{500}"), ('"1e-05"', "1e-05"),  # a string is kept as written
])
def test_jsonl_numeric_references_keep_their_exact_decimal_text(tmp_path, written, text):
    """Issue 13, item 7: the float 1e-05 became the string "1e-05", which LaTeX reads e - 5."""
    path = tmp_path / "rows.jsonl"
    path.write_text(MATH_ROW.format(truth=written) + "\n")
    assert read_rows(path)[0].ground_truth == text


def test_numbers_outside_the_reference_stay_floats(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "p", "data_source": "x", "extra_info": {"weight": 0.5}, '
                    '"tests": {"style": "call", "fn_name": "f", '
                    '"cases": [{"args": [0.25, 1], "expected": 1.5}]}}\n')
    row = read_rows(path)[0]
    case = row.tests["cases"][0]
    assert case == {"args": [0.25, 1], "expected": 1.5}
    assert [type(case["args"][0]), type(case["args"][1]), type(case["expected"])] == [float, int, float]
    assert type(row.extra_info["weight"]) is float


@pytest.mark.parametrize(("arrow_type", "value", "text"), [
    (pa.float64(), 0.00001, "0.00001"), (pa.float64(), 1e20, "100000000000000000000"),
    (pa.float64(), 0.1, "0.1"), (pa.float32(), 0.1, "0.1"), (pa.float32(), 1e-5, "0.00001"),
    (pa.float16(), 0.1, "0.1"), (pa.int64(), 72, "72"), (pa.string(), "1e-05", "1e-05"),
])
def test_parquet_numeric_references_keep_the_decimal_their_author_wrote(tmp_path, arrow_type,
                                                                        value, text):
    """A parquet float is binary: it reads as its shortest round-trip decimal at the column's
    own precision, never in exponent notation (a float32 0.1 is 0.1, not 0.10000000149...)."""
    reward_model = pa.array([{"style": "rule", "ground_truth": value}],
                            pa.struct([("style", pa.string()), ("ground_truth", arrow_type)]))
    table = pa.table({"prompt": ["p"], "data_source": ["x"], "reward_model": reward_model,
                      "extra_info": pa.array([{"weight": 0.5}])})
    pq.write_table(table, tmp_path / "rows.parquet")
    row = read_rows(tmp_path / "rows.parquet")[0]
    assert row.ground_truth == text
    assert row.extra_info == {"weight": 0.5} and type(row.extra_info["weight"]) is float


def test_in_memory_float_references_are_spelled_out():
    row = parse_row({"prompt": "p", "data_source": "x", "reward_model": {"ground_truth": 1e-05}},
                    "memory", 1)
    assert row.ground_truth == "0.00001"
