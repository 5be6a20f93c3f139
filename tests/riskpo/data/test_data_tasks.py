"""The arithmetic and code tasks, the splits of a data config, the bundle-aware sampler (exact
resume) and prompt templates."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from riskpo.data import Row, RowError, load_train_and_eval
from riskpo.data.loaders import DataConfig, DatasetConfig
from riskpo.data.sampler import PromptSampler
from riskpo.data.synthetic import generate_rows
from riskpo.data.tasks.arithmetic import ArithmeticOptions, arithmetic_problem
from riskpo.data.tasks.code import CodeTaskOptions, code_problem
from riskpo.data.templates import build_prompt, check_prompt_lengths
from riskpo.models.loading import prompt_length_counter
from riskpo.options import ConfigError


@pytest.mark.parametrize("operators", [["+"], ["+", "-", "*"]])
def test_arithmetic_answers_are_exact_integers(operators):
    config = ArithmeticOptions(min_digits=1, max_digits=4, min_terms=2, max_terms=4, operators=operators)
    rng = random.Random(0)
    for _ in range(300):
        problem = arithmetic_problem(rng, config)
        expression = problem.row.prompt.removesuffix("=")
        assert problem.row.ground_truth == problem.reference_response == str(eval(expression))
        assert problem.row.extra_info["answer_format"] == "final_number"


def test_arithmetic_digit_and_term_knobs():
    config = ArithmeticOptions(min_digits=3, max_digits=3, min_terms=3, max_terms=3)
    rows = generate_rows(lambda rng: arithmetic_problem(rng, config), 50, seed=4)
    for row in rows:
        operands = row.prompt.removesuffix("=").split("+")
        assert len(operands) == 3 and all(len(operand) == 3 for operand in operands)


def test_generation_is_seeded_distinct_and_excludes():
    make = lambda rng: arithmetic_problem(rng, ArithmeticOptions())  # noqa: E731
    first, again = generate_rows(make, 200, seed=7), generate_rows(make, 200, seed=7)
    assert first == again and len({row.prompt for row in first}) == 200
    other = generate_rows(make, 200, seed=8, exclude_prompts=[row.prompt for row in first])
    assert not {row.prompt for row in other} & {row.prompt for row in first}
    tiny_space = ArithmeticOptions(min_digits=1, max_digits=1)  # 100 distinct problems
    with pytest.raises(ValueError, match="too small"):
        generate_rows(lambda rng: arithmetic_problem(rng, tiny_space), 101, 0)


def test_held_out_eval_never_repeats_a_training_prompt():
    easy = ArithmeticOptions(min_digits=1, max_digits=2)  # 10,000 problems: collisions are likely
    data = DataConfig(train=DatasetConfig(size=3000, options=easy),
                      eval=DatasetConfig(size=300, seed=1, options=easy))
    train, held_out = load_train_and_eval(data)
    assert len(train) == 3000 and len(held_out) == 300
    assert not {row.prompt for row in train} & {row.prompt for row in held_out}


def test_validation_split_shares_no_prompt_and_is_what_eval_on_picks():
    easy = ArithmeticOptions(min_digits=1, max_digits=2)
    data = DataConfig(train=DatasetConfig(size=3000, options=easy),
                      eval=DatasetConfig(size=300, seed=1, options=easy),
                      validation=DatasetConfig(size=300, seed=1, options=easy))  # same seed
    train, held_out = load_train_and_eval(data)
    validation = load_train_and_eval(replace(data, eval_on="validation"))[1]
    assert len(validation) == 300 and held_out != validation
    prompts = [{row.prompt for row in rows} for rows in (train, held_out, validation)]
    assert not prompts[0] & prompts[1] and not prompts[0] & prompts[2]
    assert not prompts[1] & prompts[2]  # validation avoids eval's prompts, even on eval's seed


def test_evaluating_on_a_validation_split_that_is_not_declared_names_the_key():
    with pytest.raises(ConfigError, match="declares no validation split") as error:
        DataConfig(eval_on="validation").check("data")
    assert error.value.key == "data.eval_on"
    with pytest.raises(ConfigError) as error:
        DataConfig(eval_on="test").check("data")
    assert error.value.key == "data.eval_on"


@pytest.mark.parametrize("forms", [["linear"], ["linear", "quadratic"]])
def test_code_reference_solutions_pass_their_own_tests(forms):
    rng = random.Random(1)
    for _ in range(100):
        problem = code_problem(rng, CodeTaskOptions(forms=forms, coef_range=7, num_examples=3,
                                                  num_hidden_cases=4))
        tests = problem.row.tests
        assert tests["style"] == "call" and tests["fn_name"] == "f" and len(tests["cases"]) == 7
        namespace: dict = {}
        exec(problem.reference_response, namespace)  # our own generated code, trusted
        for case in tests["cases"]:
            assert namespace["f"](*case["args"]) == case["expected"]
        shown = problem.row.prompt.split(";")[:-1]
        assert shown[0].startswith("f(0)=") and len(shown) == 3


def test_code_prompts_fit_the_character_tokenizer():
    from riskpo.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    rng = random.Random(2)
    for _ in range(50):
        problem = code_problem(rng, CodeTaskOptions(forms=["linear", "quadratic"]))
        for text in (problem.row.prompt, problem.reference_response):
            assert tokenizer.unk_token_id not in tokenizer.encode(text, add_special_tokens=False)


def _rows(count: int) -> list[Row]:
    return [Row(prompt=f"{i}+0=", data_source="t", reward_model={"style": "rule", "ground_truth": str(i)})
            for i in range(count)]


def test_sampler_covers_each_epoch_and_reshuffles():
    sampler = PromptSampler(_rows(20), prompts_per_step=10, seed=3)
    epoch0 = sampler.next_batch().row_indices + sampler.next_batch().row_indices
    epoch1 = sampler.next_batch().row_indices + sampler.next_batch().row_indices
    assert sorted(epoch0) == sorted(epoch1) == list(range(20))
    assert epoch0 != epoch1 and sampler.epoch == 1


def test_sampler_resumes_exactly_across_epochs():
    rows = _rows(23)  # steps straddle epoch boundaries
    straight = PromptSampler(rows, prompts_per_step=10, seed=11)
    expected = [straight.next_batch().row_indices for _ in range(7)]
    first = PromptSampler(rows, prompts_per_step=10, seed=11)
    got = [first.next_batch().row_indices for _ in range(3)]
    state = first.state_dict()
    resumed = PromptSampler(rows, prompts_per_step=10, seed=11)
    resumed.load_state_dict(state)
    got += [resumed.next_batch().row_indices for _ in range(4)]
    assert got == expected


def test_sampler_refuses_state_of_other_data_or_seed():
    state = PromptSampler(_rows(10), prompts_per_step=5, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        PromptSampler(_rows(10), prompts_per_step=5, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="num_rows"):
        PromptSampler(_rows(11), prompts_per_step=5, seed=1).load_state_dict(state)


def test_templates():
    text_row = Row(prompt="12+345=", data_source="t", reward_model={"ground_truth": "357"})
    assert build_prompt(text_row, "plain").text == "12+345="
    chat = build_prompt(text_row, "chat", system_prompt="Be exact.", instruction="Box it.")
    assert chat.messages == [{"role": "system", "content": "Be exact."},
                             {"role": "user", "content": "12+345=\nBox it."}]
    chat_row = Row(prompt=[{"role": "user", "content": "q"}], data_source="t",
                   reward_model={"ground_truth": "1"})
    with pytest.raises(ValueError, match="data.template=chat"):
        build_prompt(chat_row, "plain")
    with pytest.raises(ValueError, match="template"):
        build_prompt(text_row, "fancy")


def test_prompt_length_check_names_the_row():
    from riskpo.models.tiny import build_tokenizer

    rows = [Row(prompt="1+2=", data_source="t", reward_model={"ground_truth": "3"}),
            Row(prompt="123456+654321=", data_source="t", reward_model={"ground_truth": "0"})]
    check_prompt_lengths(rows[:1], prompt_length_counter(build_tokenizer()), "plain", 8, "train")
    with pytest.raises(RowError, match="train, row 2, field 'prompt': renders to 14 tokens"):
        check_prompt_lengths(rows, prompt_length_counter(build_tokenizer()), "plain", 8, "train")
    from_file = Row(prompt="123456+654321=", data_source="t", reward_model={"ground_truth": "0"},
                    origin="data/train.jsonl", row_number=7)
    with pytest.raises(RowError, match="data/train.jsonl, row 7, field 'prompt': renders to 14"):
        check_prompt_lengths([from_file], prompt_length_counter(build_tokenizer()), "plain", 8, "train")
