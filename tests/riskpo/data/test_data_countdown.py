"""Countdown task generator: knobs, seeded splits with their kind quotas, every solution checked by
the verifier, distinct-solution counts against an independent brute force (every expression tree,
classes by rewriting), rare-only problems, the warm-start template mix, the tiny vocabulary."""

from __future__ import annotations

import itertools
import random
import re
import statistics

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riskpo.data import expressions as E
from riskpo.data.tasks import countdown as C
from workers.verifier import results as R
from workers.verifier.countdown import CountdownVerifier

SMALL = C.CountdownOptions(num_numbers=4)  # 4 numbers: brute force stays fast
VERIFIER = CountdownVerifier()


def problem_of(prompt: str) -> tuple[list[int], int]:
    numbers, target = re.fullmatch(r"([\d,]+)=(\d+):", prompt).groups()
    return [int(n) for n in numbers.split(",")], int(target)


def all_rows(splits: C.CountdownSplits) -> tuple[list, list, list]:
    return splits.train, splits.validation, splits.heldout


def verify(answer: str, numbers: list[int], target: int) -> str:
    row = {"response": answer, "ground_truth": {"target": target, "numbers": numbers}}
    return VERIFIER.verify(row)["status"]


# --------------------------------------------------------------- independent brute force


def trees(values: tuple[int, ...]):
    if len(values) == 1:
        yield values[0]
        return
    for cut in range(1, len(values)):
        for left in trees(values[:cut]):
            for right in trees(values[cut:]):
                for op in "+-*":
                    yield (op, left, right)


def evaluate(tree) -> int:
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    a, b = evaluate(left), evaluate(right)
    return a + b if op == "+" else a - b if op == "-" else a * b


def text_of(tree) -> str:
    return str(tree) if isinstance(tree, int) else f"({text_of(tree[1])}{tree[0]}{text_of(tree[2])})"


def is_op(tree, op: str) -> bool:
    return isinstance(tree, tuple) and tree[0] == op


def rewrites_at_root(tree):
    """Commutativity, associativity, and moving a minus across a parenthesised sum, both ways."""
    op, x, y = tree
    if op in "+*":
        yield (op, y, x)
        if is_op(x, op):
            yield (op, x[1], (op, x[2], y))
        if is_op(y, op):
            yield (op, (op, x, y[1]), y[2])
    if op == "-" and is_op(y, "+"):
        yield ("-", ("-", x, y[1]), y[2])  # x-(y+z) = (x-y)-z
    if op == "-" and is_op(x, "-"):
        yield ("-", x[1], ("+", x[2], y))
    if op == "-" and is_op(y, "-"):
        yield ("+", ("-", x, y[1]), y[2])  # x-(y-z) = (x-y)+z
    if op == "+" and is_op(x, "-"):
        yield ("-", x[1], ("-", x[2], y))
    if op == "+" and is_op(y, "-"):
        yield ("-", ("+", x, y[1]), y[2])  # x+(y-z) = (x+y)-z
    if op == "-" and is_op(x, "+"):
        yield ("+", x[1], ("-", x[2], y))


def neighbours(tree):
    if isinstance(tree, int):
        return
    yield from rewrites_at_root(tree)
    op, x, y = tree
    yield from ((op, other, y) for other in neighbours(x))
    yield from ((op, x, other) for other in neighbours(y))


def brute_force_classes(numbers: list[int], target: int) -> list[set]:
    """Every correct tree over every ordered sub-multiset, grouped into classes connected by
    rewrites (union-find): one class per distinct solution."""
    correct = {tree for size in range(1, len(numbers) + 1)
               for order in itertools.permutations(numbers, size)
               for tree in trees(order) if evaluate(tree) == target}
    parent = {tree: tree for tree in correct}

    def root(tree):
        while parent[tree] != tree:
            parent[tree] = parent[parent[tree]]
            tree = parent[tree]
        return tree

    for tree in correct:
        for other in neighbours(tree):
            assert other in correct  # a rewrite keeps the value and the numbers used
            parent[root(other)] = root(tree)
    classes: dict = {}
    for tree in correct:
        classes.setdefault(root(tree), set()).add(tree)
    return list(classes.values())


def check_against_brute_force(numbers: list[int], target: int) -> None:
    classes = brute_force_classes(numbers, target)
    keys = [{E.canonical_key(text_of(tree)) for tree in group} for group in classes]
    assert all(len(group_keys) == 1 for group_keys in keys)  # one key per class...
    assert len(set().union(*keys)) == len(classes)  # ...and a different key for each class
    assert E.all_solutions(numbers, target) == set().union(*keys)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 9), min_size=1, max_size=4), st.data())
def test_distinct_solutions_match_the_brute_force(numbers, data):
    reachable = sorted({evaluate(tree) for tree in trees(tuple(numbers))})
    target = data.draw(st.sampled_from(reachable) | st.integers(-20, 100))
    for cached_size in (4, 2, 1):  # also the search by needed value above the cached sizes
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(E, "CACHED_SIZE", cached_size)
            check_against_brute_force(numbers, target)


@pytest.mark.parametrize("numbers, target", [([1, 3, 4, 6, 8], 24), ([2, 2, 5, 7, 7], 49)])
def test_five_numbers_match_the_brute_force(numbers, target):
    check_against_brute_force(numbers, target)  # above CACHED_SIZE: the top level is searched
    searched = E.all_solutions(numbers, target)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(E, "CACHED_SIZE", 5)  # the full table over all five numbers
        assert E.all_solutions(numbers, target) == searched


# --------------------------------------------------------------- canonical form, counting


def test_count_distinct_solutions():
    assert E.count_distinct_solutions(
        ["4*6", "6*4", "(2+6)*3", "3*(6+2)", "2*3*4", "4*(3*2)", "(6-3)*4*2", "2*(6-3)*4",
         "4*6+1", "4*6*6", "abc", "", "4 * 6"], [2, 3, 4, 6], 24) == 4
    assert E.count_distinct_solutions(["9-(5-2)", "9-5+2", "2+9-5", "(2-5)+9"], [2, 5, 9], 6) == 1
    # documented: signs are not moved out of products, so these are two solutions
    assert E.count_distinct_solutions(["(7-5)*(4-1)", "(5-7)*(1-4)"], [1, 4, 5, 7], 6) == 2
    assert E.count_distinct_solutions(["3*3+1", "1+3*3", "3*3*1+1"], [1, 1, 3, 3], 10) == 2
    assert E.count_distinct_solutions([], [1, 2], 3) == 0


def expression_texts(numbers: list[int]):
    def join(parts):
        left, right, op, paren = parts
        return f"({left}{op}{right})" if paren else f"{left}{op}{right}"

    return st.recursive(st.sampled_from([str(n) for n in numbers]), lambda inner: st.tuples(
        inner, inner, st.sampled_from("+-*"), st.booleans()).map(join), max_leaves=7)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=5), st.data())
def test_canonical_key_keeps_the_value_and_is_idempotent(numbers, data):
    text = data.draw(expression_texts(numbers))
    key = E.canonical_key(text)
    assert eval(key) == eval(text)  # test-made text of digits and operators
    assert E.canonical_key(key) == key
    assert E.expression_shape(key) == E.expression_shape(text)
    target = eval(text) + data.draw(st.sampled_from([0, 0, 1]))
    agrees = (verify(text, numbers, target) == R.OK) == E.solves(text, numbers, target)
    assert agrees, (text, numbers, target)


def test_parse_expression_refuses_what_the_verifier_refuses():
    for bad in ("-3", "3/4", "3 4", "(3", "٣+1", "3+" + "1+" * 200 + "1", "(" * 40 + "1" + ")" * 40,
                "a+1", ""):
        with pytest.raises(ValueError):
            E.parse_expression(bad)
    assert E.parse_expression("a*b+c", placeholders=True) == ("+", ("*", ("n", "a"), ("n", "b")),
                                                              ("n", "c"))


# --------------------------------------------------------------- config and splits


@pytest.mark.parametrize("knobs, knob", [
    ({"num_numbers": 1}, "num_numbers"), ({"num_numbers": 6}, "num_numbers"),
    ({"min_number": 5, "max_number": 4}, "min_number"), ({"min_number": -1}, "min_number"),
    ({"min_target": 50, "max_target": 10}, "min_target"),
    ({"dominant_template": "a*b+"}, "dominant_template"),
    ({"dominant_template": "a*a+b"}, "dominant_template"),
    ({"dominant_template": "2*a+b"}, "dominant_template"),
    ({"rare_template": "a"}, "rare_template"),
    ({"num_numbers": 2, "dominant_template": "a*b", "rare_template": "(a+b)*c"}, "rare_template"),
    ({"rare_template": "c+b*a"}, "rare_template"),  # the dominant shape again
    ({"rare_fraction": 0.6}, "rare_fraction"), ({"rare_fraction": -0.1}, "rare_fraction"),
    ({"train_rare_only_fraction": 1.5}, "train_rare_only_fraction"),
    ({"eval_rare_only_fraction": 0.8, "eval_both_fraction": 0.3}, "eval_both_fraction"),
    ({"seed": -1}, "seed"),
])
def test_bad_knobs_are_named(knobs, knob):
    with pytest.raises(ValueError, match=f"countdown.*{knob}"):
        C.CountdownOptions(**knobs).validate()


def test_splits_are_seeded_disjoint_and_filled_to_their_quotas():
    splits = C.make_splits(SMALL, 120, 40, 40)
    assert splits == C.make_splits(SMALL, 120, 40, 40)
    other = C.make_splits(C.CountdownOptions(num_numbers=4, seed=1), 120, 40, 40)
    assert [row.prompt for row in other.heldout] != [row.prompt for row in splits.heldout]
    prompts = [[row.prompt for row in rows] for rows in all_rows(splits)]
    assert [len(p) for p in prompts] == [120, 40, 40]
    assert len(set().union(*map(set, prompts))) == 200  # no problem in two splits
    quotas = [(120, 0.25, 0.25), (40, 0.5, 0.25), (40, 0.5, 0.25)]
    for rows, (size, rare_only, both) in zip(all_rows(splits), quotas, strict=True):
        kinds = [row.extra_info["kind"] for row in rows]
        assert {kind: kinds.count(kind) for kind in C.KINDS} == C.kind_quotas(size, rare_only, both)
    assert C.kind_quotas(40, 0.5, 0.25) == {"both": 10, "dominant_only": 10, "rare_only": 20}
    with pytest.raises(ValueError, match="train_size"):
        C.make_splits(SMALL, -1, 0, 0)


def test_rows_hold_the_problem_and_honest_extra_info():
    splits = C.make_splits(SMALL, 0, 30, 30)
    for row in splits.validation + splits.heldout:
        numbers, target = problem_of(row.prompt)
        assert row.data_source == "countdown" and numbers == sorted(numbers)
        assert row.reward_model == {"style": "rule",
                                    "ground_truth": {"target": target, "numbers": numbers}}
        problem = C.make_problem(numbers, target, SMALL)
        for solutions, count in ((problem.dominant, "dominant_solutions"),
                                 (problem.rare, "rare_solutions")):
            assert len(solutions) == row.extra_info[count]
            assert all(verify(text, numbers, target) == R.OK for text in solutions.values())
        assert row.extra_info["distinct_solutions"] == len(brute_force_classes(numbers, target))


def fills(template: str, numbers: list[int], target: int) -> list[str]:
    """Brute force: every filling of the template's letters with distinct given positions."""
    letters = re.findall(r"[a-z]", template)
    texts = []
    for values in itertools.permutations(numbers, len(letters)):
        mapping = dict(zip(letters, map(str, values), strict=True))
        text = re.sub(r"[a-z]", lambda m, mapping=mapping: mapping[m.group()], template)
        if eval(text) == target:
            texts.append(text)
    return texts


def test_kinds_are_what_the_templates_can_reach():
    config = C.CountdownOptions()
    splits = C.make_splits(config, 60, 40, 40)
    for row in splits.train + splits.validation + splits.heldout:
        numbers, target = problem_of(row.prompt)
        dominant = bool(fills(config.dominant_template, numbers, target))
        rare = bool(fills(config.rare_template, numbers, target))
        assert row.extra_info["kind"] == {(True, True): "both", (True, False): "dominant_only",
                                          (False, True): "rare_only"}[(dominant, rare)]
        assert (config.rare_template in row.extra_info["templates"]) == rare
    rare_only = [row for row in splits.heldout if row.extra_info["kind"] == "rare_only"]
    assert len(rare_only) == 20  # held-out rows that only the rare template solves


def test_template_solutions_are_the_solutions_of_that_shape():
    for row in C.make_splits(SMALL, 0, 0, 30).heldout:
        numbers, target = problem_of(row.prompt)
        every = E.all_solutions(numbers, target)
        for template in (SMALL.dominant_template, SMALL.rare_template):
            shape = E.expression_shape(template, placeholders=True)
            assert set(E.template_solutions(template, numbers, target)) == {
                key for key in every if E.expression_shape(key) == shape}
            assert {E.canonical_key(text) for text in fills(template, numbers, target)} == set(
                E.template_solutions(template, numbers, target))


def test_problems_have_several_distinct_solutions():
    rows = C.make_splits(C.CountdownOptions(), 200, 0, 0).train
    counts = [row.extra_info["distinct_solutions"] for row in rows]
    assert min(counts) >= 1 and statistics.median(counts) >= 5


def test_an_exhausted_space_is_an_error():
    tiny = C.CountdownOptions(num_numbers=2, min_number=1, max_number=3, min_target=1,
                             max_target=20, dominant_template="a*b", rare_template="a+b")
    with pytest.raises(ValueError, match="exhausted"):
        C.make_splits(tiny, 50, 0, 0)


# --------------------------------------------------------------- warm start


def template_pattern(template: str) -> re.Pattern:
    return re.compile(re.sub(r"[a-z]", r"\\d+", re.escape(template)))


def test_warmstart_pairs_mix_templates_and_are_correct():
    config = SMALL
    excluded = {row.prompt for row in C.make_splits(config, 0, 40, 40).heldout}
    pairs = C.warmstart_pairs(config, 1000, seed=3, exclude_prompts=excluded)
    assert pairs == C.warmstart_pairs(config, 1000, seed=3, exclude_prompts=excluded)
    assert pairs != C.warmstart_pairs(config, 1000, seed=4, exclude_prompts=excluded)
    dominant, rare = template_pattern(config.dominant_template), template_pattern(config.rare_template)
    kinds = ["rare" if rare.fullmatch(s) else "dominant" if dominant.fullmatch(s) else s
             for _, s in pairs]
    assert kinds.count("rare") == 100 and kinds.count("dominant") == 900
    for prompt, solution in set(pairs):
        numbers, target = problem_of(prompt)
        assert prompt not in excluded and verify(solution, numbers, target) == R.OK
    for prompt in {prompt for prompt, _ in pairs}:
        numbers, target = problem_of(prompt)
        assert fills(config.dominant_template, numbers, target)  # both templates solve it
        assert fills(config.rare_template, numbers, target)


def test_warmstart_pool_excludes_the_split_rows_without_starving():
    splits = C.make_splits(SMALL, 300, 40, 40)
    excluded = {row.prompt for rows in all_rows(splits) for row in rows}
    pool = C.warmstart_pool(SMALL, SMALL.seed, exclude_prompts=excluded)
    both_left = 502 - sum(row.extra_info["kind"] == "both" for rows in all_rows(splits)
                          for row in rows)  # 502 problems of this space are solved by both
    assert len(pool) >= 0.9 * both_left and not {problem.prompt for problem in pool} & excluded


def test_streamed_warmstart_examples_keep_the_rare_fraction():
    config = C.CountdownOptions(rare_fraction=0.1)
    pool = C.warmstart_pool(config, seed=0, max_problems=500)
    assert len(pool) == 500 and all(problem.kind == "both" for problem in pool)
    rng, rare = random.Random(0), template_pattern(config.rare_template)
    draws = [C.warmstart_example(rng, pool, config.rare_fraction) for _ in range(20_000)]
    share = sum(bool(rare.fullmatch(solution)) for _, solution in draws) / len(draws)
    assert abs(share - 0.1) < 0.015  # binomial sd is 0.002
    for problem, solution in draws[:200]:
        row = problem.row(config, count_all=False)
        truth = row.reward_model["ground_truth"]
        assert "distinct_solutions" not in row.extra_info and row.prompt == problem.prompt
        assert E.solves(solution, truth["numbers"], truth["target"])


def test_tiny_tokenizer_covers_prompts_and_answers():
    from riskpo.models.tiny import DEFAULT_CHARS, build_tokenizer

    tokenizer = build_tokenizer()
    config = C.CountdownOptions()
    splits = C.make_splits(config, 50, 20, 20)
    texts = [prompt + solution for prompt, solution in C.warmstart_pairs(config, 300, seed=0)]
    texts += [row.prompt for rows in all_rows(splits) for row in rows]
    for text in texts:
        assert set(text) <= set(DEFAULT_CHARS) and len(text) <= 24
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text
