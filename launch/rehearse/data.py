"""Rows of a recipe's data format, made here when its files are absent: records shaped as each
hub dataset publishes them (GSM8K's "#### n" answers, MATH's \\boxed{} solutions, DAPO-Math's
verl-shaped prompts, AIME's problem/answer, Geometry3K's figure + problem) go through the same
converters as `python -m launch.prepare_data` (launch/prepare_data.py RECIPES) into the same
parquet files (cached), and `substitute_missing_data` points a composed recipe's absent files at
them. The problems are small seeded arithmetic; the format is the real one."""

from __future__ import annotations

import glob
import io
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launch.prepare_data import RECIPES, convert_records, write_rows
from launch.rehearse.plan import Line
from riskpo.options import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

DAPO_INSTRUCTION = ("Solve the following math problem step by step. The last line of your response "
                    "should be of the form Answer: $Answer (without quotes) where $Answer is the "
                    "answer to the problem.\n\n{problem}\n\nRemember to put your answer on its own "
                    "line after \"Answer:\".")
TRAIN_ROWS, EVAL_ROWS = 32, 8  # generated rows per file: two rehearsal steps, a few held out
NAMES = ("Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana")
GOODS = ("apples", "books", "marbles", "stamps", "pencils", "shells")


def _word_problem(rng: random.Random) -> tuple[str, int, str]:
    """A GSM8K-style question, its answer and a worked solution."""
    name, goods = rng.choice(NAMES), rng.choice(GOODS)
    boxes, each, given = rng.randint(2, 9), rng.randint(3, 12), rng.randint(1, 20)
    answer = boxes * each - given
    question = (f"{name} has {boxes} boxes with {each} {goods} in each box. {name} gives away "
                f"{given} {goods}. How many {goods} does {name} have left?")
    solution = f"{name} has {boxes} * {each} = {boxes * each} {goods}. {boxes * each} - {given} = {answer}."
    return question, answer, solution


def _expression(rng: random.Random) -> tuple[str, int]:
    a, b, c = rng.randint(2, 19), rng.randint(2, 19), rng.randint(1, 40)
    return f"{a} \\cdot {b} - {c}", a * b - c


def gsm8k_record(rng: random.Random, index: int) -> dict[str, Any]:
    question, answer, solution = _word_problem(rng)
    return {"question": question, "answer": f"{solution}\n#### {answer}"}


def math_record(rng: random.Random, index: int) -> dict[str, Any]:
    text, value = _expression(rng)
    return {"problem": f"Compute ${text}$.", "level": f"Level {1 + index % 5}", "type": "Prealgebra",
            "solution": f"We have ${text} = \\boxed{{{value}}}$."}


def dapo_record(rng: random.Random, index: int) -> dict[str, Any]:
    text, value = _expression(rng)
    problem = f"Find the value of ${text}$."
    return {"data_source": "math_dapo", "ability": "MATH",
            "prompt": [{"role": "user", "content": DAPO_INSTRUCTION.format(problem=problem)}],
            "reward_model": {"ground_truth": str(value), "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": f"rehearsal-{index:05d}"}}


def aime_record(rng: random.Random, index: int) -> dict[str, Any]:
    base, power = rng.randint(3, 9), rng.randint(4, 9)
    return {"id": 60 + index, "problem": f"Find the remainder when ${base}^{{{power}}}$ is divided by $1000$.",
            "solution": f"${base}^{{{power}}} = {base ** power}$.", "answer": str(base ** power % 1000),
            "url": "", "year": "2024"}


def geometry3k_record(rng: random.Random, index: int) -> dict[str, Any]:
    """A figure (a segment split in two labelled parts, the whole labelled x) and its question."""
    from PIL import Image, ImageDraw

    left, right = rng.randint(2, 15), rng.randint(2, 15)
    width, height = 112 + 28 * rng.randint(0, 2), 84
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    split = 8 + (width - 16) * left // (left + right)
    draw.line([(8, 50), (width - 8, 50)], fill="black", width=2)
    for x in (8, split, width - 8):
        draw.line([(x, 44), (x, 56)], fill="black", width=2)
    draw.text((8 + (split - 8) // 2 - 4, 30), str(left), fill="black")
    draw.text((split + (width - 8 - split) // 2 - 4, 30), str(right), fill="black")
    draw.text((width // 2 - 3, 62), "x", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"images": [{"bytes": buffer.getvalue(), "path": None}],
            "problem": "<image>Find x.", "answer": str(left + right)}


# prepare_data's dataset name -> how one record of it is made
RECORD_MAKERS: dict[str, Callable[[random.Random, int], dict[str, Any]]] = {
    "gsm8k": gsm8k_record, "math": math_record, "dapo_math_17k": dapo_record,
    "aime_2024": aime_record, "geometry3k": geometry3k_record,
}


def dataset_of(path: str) -> str | None:
    """The prepare_data dataset a recipe's file is (data/<dataset>/<split>.<ext>), else None."""
    name = Path(path).parent.name
    return name if name in RECORD_MAKERS else None


def write_recipe_rows(dataset: str, split: str, count: int, output: Path, seed: int = 0) -> Path:
    """`count` rows of `dataset` in the recipe's format, converted by prepare_data's own
    converter and written as parquet to `output` (moved into place whole, so a rehearsal
    beside this one never reads half a file); returns output."""
    rng = random.Random(f"{dataset}/{split}/{seed}")
    records = [RECORD_MAKERS[dataset](rng, index) for index in range(count)]
    staging = output.with_name(f".{output.stem}-{os.getpid()}{output.suffix}")
    try:
        write_rows(list(convert_records(records, RECIPES[dataset], split)), staging)
        os.replace(staging, output)
    finally:
        staging.unlink(missing_ok=True)
    return output


def corpus(count: int = 400, seed: int = 0) -> list[str]:
    """Text of the kinds the recipes' rows hold (questions, solutions, instructions), for the
    rehearsal tokenizer's merges."""
    rng = random.Random(f"corpus/{seed}")
    texts = [DAPO_INSTRUCTION, "Let's think step by step and output the final answer within \\boxed{}."]
    for index in range(count):
        question, _, solution = _word_problem(rng)
        texts += [question, solution, math_record(rng, index)["solution"], aime_record(rng, index)["problem"]]
    return texts


def substitute_missing_data(cfg: DictConfig) -> list[Line]:
    """Points every data file of the recipe that is absent here at generated rows of its
    dataset's format (cached); returns a line per file."""
    from riskpo.models.warmstart import cache_root

    lines = []
    for split in ("train", "eval", "validation"):
        dataset = cfg.data.get(split)
        if dataset is None or dataset.source not in ("parquet", "jsonl"):
            continue
        files = list(dataset.options.files)
        for index, pattern in enumerate(files):
            if _exists(pattern):
                lines.append(Line("kept", f"data.{split}.options.files[{index}]", pattern, pattern,
                                  "found on this machine"))
                continue
            name = dataset_of(pattern)
            if name is None:
                raise ConfigError(f"data.{split}.options.files", f"{pattern!r} is absent, and the "
                                  "rehearsal makes rows only for the datasets of launch/prepare_data.py "
                                  f"(data/<dataset>/<split>.parquet)", "point it at an existing file")
            count = TRAIN_ROWS if split == "train" else EVAL_ROWS
            output = cache_root() / "rehearsal" / "data" / name / f"{Path(pattern).stem}-{count}.parquet"
            if not output.is_file():
                write_recipe_rows(name, Path(pattern).stem, count, output)
            files[index] = str(output)
            lines.append(Line("replaced", f"data.{split}.options.files[{index}]", pattern, output,
                              f"absent here: {count} rows of {name}'s format, made by its "
                              "prepare_data converter"))
        dataset.options.files = files
    return lines


def _exists(pattern: str) -> bool:
    return Path(pattern).expanduser().exists() or bool(glob.glob(str(Path(pattern).expanduser())))
