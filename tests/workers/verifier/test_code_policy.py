"""Issue 13, code: right programs graded 0 by other graders, with the right value, and more of
each kind: floats printed to stdout, outputs over a fixed cap, exceptions and in-place argument
changes in assert-style checks. What the sandbox protects still holds (forged replies)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from workers.verifier import results as R
from workers.verifier.code import outputs_match, tokens_match


def stdio(code: str, expected: str, stdin: str = "") -> dict:
    return {"id": 0, "code": code,
            "tests": {"style": "stdio", "cases": [{"stdin": stdin, "stdout": expected}]}}


def checked(code: str, test: str, entry_point: str = "f", prompt: str = "") -> dict:
    return {"id": 0, "code": code, "tests": {"style": "assert", "entry_point": entry_point,
                                             "test": test, "prompt": prompt}}


# 9. Numbers in stdout: 1e-6 absolute or relative where the expected token is a float.
@pytest.mark.parametrize(("actual", "expected", "equal"), [
    ("0.333333", "0.333333333333", True),  # the input
    ("0.3333", "0.333333333333", False),
    ("3.333333e-01", "0.333333333333", True),
    ("1000000.5", "1000000.0", True),  # relative
    ("1000002", "1000000.0", False),
    ("0.0000015", "0.000001", True),  # absolute
    ("0.000003", "0.000001", False),
    ("1000001", "1000000", False),  # an integer is exactly its value, whatever its size
    ("1" * 30 + "1", "1" * 30 + "0", False),
    ("3.0", "3", True), ("007", "7", True), ("3.0000001", "3", False), ("-0", "0", True),
    ("-0.5000000001", "-0.5", True),
    ("+0.5", "0.5", True),
    ("inf", "inf", True), ("nan", "0.5", False), ("inf", "1e400", False),
    ("1" * 400 + ".0", "1" * 399 + "2.0", False),  # both overflow to inf: no tolerance
    ("0.5x", "0.5", False), ("abc", "abd", False),
])
def test_tokens_match(actual, expected, equal):
    assert tokens_match(actual, expected) is equal


def test_outputs_match_numbers_token_by_token():
    assert outputs_match(b"0.333333 0.666667\n2\n", "0.333333333 0.666666667\n2")
    assert outputs_match(b"x 0.5000001  \n\n", "x 0.5")
    assert not outputs_match(b"0.333333  0.666667\n", "0.333333333 0.666666667")  # spacing
    assert not outputs_match(b"0.333333\n0.5\n", "0.333333333")
    assert not outputs_match(b"YES 0.5\n", "NO 0.5")


def test_printed_floats_are_compared_as_numbers(code_verifier):
    assert code_verifier.verify(stdio("print(f'{1/3:.6f}')", "0.333333333333"))["status"] == R.OK
    assert code_verifier.verify(stdio("print(f'{1/3:.3f}')", "0.333333333333"))["status"] == \
        R.WRONG_ANSWER
    lines = "print(1/3, 2/3)\nprint(10**6 + 1)"
    assert code_verifier.verify(stdio(lines, "0.333333333 0.666666667\n1000001"))["reward"] == 1.0
    assert code_verifier.verify(stdio(lines, "0.333333333 0.666666667\n1000000"))["reward"] == 0.0


# 10. The output cap is a setting with a default that fits real judges' outputs.
BIG_OUTPUT = "import sys\nsys.stdout.write('x' * (3 << 20))"


def test_a_correct_output_over_one_mib_passes(code_verifier):
    result = code_verifier.verify(stdio(BIG_OUTPUT, "x" * (3 << 20)))
    assert result["status"] == R.OK, result["message"]


@pytest.mark.slow
def test_an_output_over_the_cap_says_what_the_cap_was():
    from workers.verifier.code import CodeVerifier
    from workers.verifier.executor import CodeExecutor, ExecLimits

    executor = CodeExecutor(1, ExecLimits(output_bytes=1 << 20))
    try:
        verifier = CodeVerifier(executor)
        result = verifier.verify(stdio(BIG_OUTPUT, "x" * (3 << 20)))
        assert result["status"] == R.OUTPUT_LIMIT
        assert "stdout went over the 1 MiB output cap" in result["message"], result["message"]
        spam = verifier.verify(stdio("import sys\nsys.stderr.write('y' * (2 << 20))", ""))
        assert spam["status"] == R.OUTPUT_LIMIT and "stderr" in spam["message"]
    finally:
        executor.close()


def test_the_run_config_sets_the_output_cap():
    from riskpo.options import ConfigError
    from workers.verifier.config import VerifierConfig

    assert VerifierConfig().limits().sandbox.output_bytes == 64 << 20
    assert VerifierConfig(code_output_mb=2.5).limits().sandbox.output_bytes == 5 << 19
    with pytest.raises(ConfigError, match="verifier.code_output_mb"):
        VerifierConfig(code_output_mb=0).check("verifier")


@pytest.mark.slow
def test_cli_output_limit_flag(tmp_path):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps(stdio(BIG_OUTPUT, "x" * (3 << 20))) + "\n")
    command = [sys.executable, "-m", "workers.verifier", "code", "--input", str(source),
               "--output", str(target), "--workers", "1"]
    statuses = []
    for extra in (["--output-limit-mb", "2"], []):
        subprocess.run(command + extra, check=True, capture_output=True, timeout=120)
        result = json.loads(target.read_text())
        statuses.append(result["status"])
        if extra:
            assert "2 MiB output cap" in result["message"], result["message"]
    assert statuses == [R.OUTPUT_LIMIT, R.OK]


# 11. The check sees the exception type it would see in plain Python.
RAISES_VALUE_ERROR = "def f(n):\n    raise ValueError('bad')\n"
EXPECTS_VALUE_ERROR = ("def check(candidate):\n    try:\n        candidate(-1)\n"
                       "    except ValueError:\n        return\n    raise AssertionError\n")
PROMPT_WITH_ERROR = "class InvalidInput(Exception):\n    pass\n"
EXCEPTION_CASES = {
    "issue_input": (RAISES_VALUE_ERROR, EXPECTS_VALUE_ERROR, "", R.OK),
    "base_class_caught": (
        "def f(d):\n    return d['missing']\n",
        "def check(candidate):\n    try:\n        candidate({})\n    except LookupError as e:\n"
        "        assert type(e) is KeyError and e.args == ('missing',)\n        return\n"
        "    raise AssertionError\n", "", R.OK),
    "arguments_kept": (
        "def f(n):\n    raise ValueError('bad', n)\n",
        "def check(candidate):\n    try:\n        candidate(3)\n    except ValueError as e:\n"
        "        assert e.args == ('bad', 3)\n        return\n    raise AssertionError\n", "", R.OK),
    "solution_subclass": (
        "class Mine(ValueError):\n    pass\ndef f(n):\n    raise Mine('x')\n",
        EXPECTS_VALUE_ERROR, "", R.OK),
    "prompt_class": (
        PROMPT_WITH_ERROR + "def f(n):\n    raise InvalidInput('neg')\n",
        "def check(candidate):\n    try:\n        candidate(-1)\n    except InvalidInput:\n"
        "        return\n    raise AssertionError\n", PROMPT_WITH_ERROR, R.OK),
    "zero_division": (
        "def f(n):\n    return 1 // n\n",
        "def check(candidate):\n    try:\n        candidate(0)\n    except ZeroDivisionError:\n"
        "        return\n    raise AssertionError\n", "", R.OK),
    "wrong_type": ("def f(n):\n    raise TypeError('bad')\n", EXPECTS_VALUE_ERROR, "",
                   R.RUNTIME_ERROR),
    "no_exception": ("def f(n):\n    return n\n", EXPECTS_VALUE_ERROR, "", R.WRONG_ANSWER),
    "uncaught": (RAISES_VALUE_ERROR, "def check(candidate):\n    assert candidate(1) == 1\n",
                 "", R.RUNTIME_ERROR),
    "memory": ("def f(n):\n    raise MemoryError\n",
               "def check(candidate):\n    assert candidate(1) == 1\n", "", R.MEMORY),
    "system_exit_is_no_exception": ("def f(n):\n    raise SystemExit(0)\n",
                                    "def check(candidate):\n    try:\n        candidate(1)\n"
                                    "    except BaseException:\n        return\n", "",
                                    R.RUNTIME_ERROR),
}


@pytest.mark.parametrize("name", sorted(EXCEPTION_CASES))
def test_the_check_sees_the_candidates_exception_type(name, code_verifier):
    code, test, prompt, status = EXCEPTION_CASES[name]
    result = code_verifier.verify(checked(code, test, prompt=prompt))
    assert result["status"] == status, (result["status"], result["message"])


# 12. Calls have plain Python argument semantics as the check observes them.
MUTATION_CASES = {
    "issue_input": ("def f(a):\n    a.sort()\n",
                    "def check(candidate):\n    a = [2, 1]\n    candidate(a)\n    assert a == [1, 2]\n"),
    "append_and_return_self": (
        "def f(a):\n    a.append(1)\n    return a\n",
        "def check(candidate):\n    a = []\n    assert candidate(a) is a and a == [1]\n"),
    "nested_identity": (
        "def f(m):\n    m[0].append(9)\n    m.insert(0, [7])\n",
        "def check(candidate):\n    r = [1]\n    m = [r]\n    candidate(m)\n"
        "    assert m == [[7], [1, 9]] and m[1] is r and r == [1, 9]\n"),
    "dict_and_set": (
        "def f(d, s):\n    d['k'] = 2\n    del d['x']\n    s.add(3)\n",
        "def check(candidate):\n    d, s = {'x': 1}, {1}\n    candidate(d, s)\n"
        "    assert d == {'k': 2} and s == {1, 3}\n"),
    "aliased_arguments": (
        "def f(a, b):\n    a.append(1)\n    return len(b)\n",
        "def check(candidate):\n    a = []\n    assert candidate(a, a) == 1 and a == [1]\n"),
    "inside_a_tuple": (
        "def f(t):\n    t[0].append(2)\n",
        "def check(candidate):\n    t = ([1], 'x')\n    candidate(t)\n    assert t[0] == [1, 2]\n"),
    "changed_before_raising": (
        "def f(a):\n    a.clear()\n    raise ValueError\n",
        "def check(candidate):\n    a = [1]\n    try:\n        candidate(a)\n"
        "    except ValueError:\n        assert a == []\n        return\n    raise AssertionError\n"),
    "matrix_rotated_in_place": (
        "def f(m):\n    n = len(m)\n    for i in range(n):\n        for j in range(i, n):\n"
        "            m[i][j], m[j][i] = m[j][i], m[i][j]\n    for row in m:\n        row.reverse()\n",
        "def check(candidate):\n    m = [[1, 2], [3, 4]]\n    rows = list(m)\n    candidate(m)\n"
        "    assert m == [[3, 1], [4, 2]] and m[0] is rows[0]\n"),
    "untouched_stays": (
        "def f(a):\n    return sum(a)\n",
        "def check(candidate):\n    a = [1, 2]\n    assert candidate(a) == 3 and a == [1, 2]\n"),
}


@pytest.mark.parametrize("name", sorted(MUTATION_CASES))
def test_in_place_changes_to_arguments_show_in_the_check(name, code_verifier):
    code, test = MUTATION_CASES[name]
    result = code_verifier.verify(checked(code, test))
    assert result["status"] == R.OK, result


def test_a_wrong_in_place_change_fails(code_verifier):
    result = code_verifier.verify(checked("def f(a):\n    a.reverse()\n",
                                          MUTATION_CASES["issue_input"][1].replace("[2, 1]",
                                                                                   "[3, 1, 2]")))
    assert result["status"] == R.WRONG_ANSWER


def test_call_style_returns_its_argument_plainly(code_verifier):
    result = code_verifier.verify({"id": 0, "code": "def f(a):\n    a.sort()\n    return a\n",
                                   "tests": {"style": "call", "fn_name": "f",
                                             "cases": [{"args": [[2, 1]], "expected": [1, 2]}]}})
    assert result["status"] == R.OK, result


FORGE = ("import json, os, struct, time\n"
         "def f(*args):\n"
         "    body = json.dumps({reply}).encode()\n"
         "    os.write(4, struct.pack('!I', len(body)) + body)\n"
         "    time.sleep(30)\n")
FORGED_REPLIES = {
    "unknown_tag": {"value": {"bogus": 1}},
    "reference_out_of_range": {"value": {"ref": 99}},
    "state_of_another_shape": {"value": None, "state": [[], {"dict": []}]},
    "state_too_long": {"value": None, "state": [[], [], [], []]},
    "exception_class_not_a_list": {"raised": "ValueError", "mro": "ValueError"},
    "exception_args_malformed": {"raised": "ValueError", "mro": [["ValueError", True]],
                                 "args": {"bogus": 1}},
    "system_exit": {"raised": "SystemExit", "mro": [["SystemExit", True]], "args": [0]},
}


@pytest.mark.parametrize("name", sorted(FORGED_REPLIES))
def test_a_forged_reply_never_passes_a_check(name, code_verifier):
    """A candidate writing its own reply frame cannot make a check's `except` clause pass it."""
    code = FORGE.format(reply=repr(FORGED_REPLIES[name]))
    test = ("def check(candidate):\n    a = [1]\n    try:\n        candidate(a, [2])\n"
            "    except Exception:\n        return\n    raise AssertionError\n")
    expects_error = code_verifier.verify(checked(code, test))
    assert expects_error["reward"] == 0.0, expects_error
    assert not R.is_masked(expects_error), expects_error
