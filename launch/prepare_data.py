"""Convert GSM8K, MATH, DAPO-Math-17k, AIME 2024 and Geometry3K (from the Hugging Face hub or local
files) into the verl row format: prompt messages, data_source, reward_model {style,
ground_truth}, extra_info; Geometry3K rows add `images` (PNG bytes, one per <image> placeholder)."""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOXED_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
LOCAL_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}

Row = dict[str, Any]


def gsm8k_answer(solution: str) -> str:
    """GSM8K's final answer: what follows the last '####', without thousands separators."""
    _, sep, tail = solution.rpartition("####")
    if not sep or not tail.strip():
        raise ValueError(f"GSM8K answer without a '#### N' line: {solution[-80:]!r}")
    return tail.strip().replace(",", "")


def last_boxed(solution: str) -> str:
    r"""The content of the last \boxed{...} (or \fbox{...}) in a MATH solution, braces balanced."""
    start = max(solution.rfind("\\boxed"), solution.rfind("\\fbox"))
    if start < 0:
        raise ValueError(f"MATH solution without \\boxed{{}}: {solution[-80:]!r}")
    open_brace = solution.find("{", start)
    if open_brace < 0:
        raise ValueError(f"MATH solution with an unbraced \\boxed: {solution[start:start + 80]!r}")
    depth = 0
    for index in range(open_brace, len(solution)):
        depth += {"{": 1, "}": -1}.get(solution[index], 0)
        if depth == 0:
            return solution[open_brace + 1 : index].strip()
    raise ValueError(f"MATH solution with unbalanced braces: {solution[start:start + 80]!r}")


def _field(record: Mapping[str, Any], *names: str) -> Any:
    """A record's value under the first of `names` present (case-insensitive)."""
    lowered = {key.lower(): value for key, value in record.items()}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    raise KeyError(f"record has none of the columns {names}; it has {sorted(record)}")


def _user_prompt(question: str, instruction: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{question.strip()} {instruction}"}]


def _row(prompt: list[dict[str, str]], source: str, answer: str, extra: Row) -> Row:
    return {
        "data_source": source,
        "prompt": prompt,
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(answer)},
        "extra_info": extra,
    }


def convert_gsm8k(record: Mapping[str, Any], index: int, split: str) -> Row:
    question = _field(record, "question")
    answer = gsm8k_answer(_field(record, "answer"))
    extra = {"split": split, "index": index, "question": question}
    return _row(_user_prompt(question, BOXED_INSTRUCTION), "openai/gsm8k", answer, extra)


def convert_math(record: Mapping[str, Any], index: int, split: str) -> Row:
    problem = _field(record, "problem")
    answer = last_boxed(_field(record, "solution"))
    extra = {"split": split, "index": index, "level": record.get("level"), "type": record.get("type")}
    return _row(_user_prompt(problem, BOXED_INSTRUCTION), "hendrycks/math", answer, extra)


def convert_dapo(record: Mapping[str, Any], index: int, split: str) -> Row:
    """DAPO-Math-17k rows are verl-shaped already; keep their prompt, normalise the reward spec."""
    prompt = [dict(message) for message in _field(record, "prompt")]
    answer = _field(record, "reward_model")["ground_truth"]
    original_extra = dict(record.get("extra_info") or {})
    extra = {"split": split, "index": index, "original_index": original_extra.get("index")}
    return _row(prompt, "BytedTsinghua-SIA/DAPO-Math-17k", answer, extra)


IMAGE_PLACEHOLDER = "<image>"  # riskpo.data.rows.IMAGE_PLACEHOLDER (the row format's)


def image_png_bytes(image: Any) -> bytes:
    """One image of a record as encoded bytes: a PIL image (what `datasets` decodes an Image
    column to) re-encoded as PNG, or a {"bytes": ...} struct (an undecoded parquet column)."""
    if isinstance(image, dict) and image.get("bytes"):
        return bytes(image["bytes"])
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    if hasattr(image, "save"):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise ValueError(f"an image must be a PIL image or hold its bytes, got {type(image).__name__}")


def convert_geometry3k(record: Mapping[str, Any], index: int, split: str) -> Row:
    """Geometry3K (hiyouga/geometry3k, verl's geo3k example): a problem whose text holds an
    <image> placeholder per figure; a placeholder missing from the text is put first."""
    problem = str(_field(record, "problem")).strip()
    images = [image_png_bytes(image) for image in _field(record, "images")]
    if not images:
        raise ValueError("a Geometry3K record without its figure")
    missing = len(images) - problem.count(IMAGE_PLACEHOLDER)
    if missing < 0:
        raise ValueError(f"{problem.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} placeholders "
                         f"for {len(images)} image(s)")
    problem = IMAGE_PLACEHOLDER * missing + problem
    answer = str(_field(record, "answer")).strip()
    extra = {"split": split, "index": index, "answer_format": "boxed"}
    row = _row(_user_prompt(problem, BOXED_INSTRUCTION), "hiyouga/geometry3k", answer, extra)
    row["images"] = [{"bytes": image, "path": None} for image in images]
    return row


def convert_aime(record: Mapping[str, Any], index: int, split: str) -> Row:
    problem = _field(record, "problem")
    answer = str(_field(record, "answer")).strip()
    extra = {"split": split, "index": index, "id": record.get("id", record.get("ID"))}
    return _row(_user_prompt(problem, BOXED_INSTRUCTION), "aime_2024", answer, extra)


@dataclass(frozen=True)
class DatasetRecipe:
    """Where a dataset lives on the hub and how one of its records becomes a row."""

    hub_path: str
    hub_config: str | None
    splits: tuple[str, ...]
    convert: Callable[[Mapping[str, Any], int, str], Row]
    deduplicate: bool = False


RECIPES: dict[str, DatasetRecipe] = {
    "gsm8k": DatasetRecipe("openai/gsm8k", "main", ("train", "test"), convert_gsm8k),
    "math": DatasetRecipe("EleutherAI/hendrycks_math", None, ("train", "test"), convert_math),
    # The published DAPO-Math-17k parquet repeats each of its ~17.9k problems about 100 times.
    "dapo_math_17k": DatasetRecipe(
        "BytedTsinghua-SIA/DAPO-Math-17k", None, ("train",), convert_dapo, deduplicate=True
    ),
    "aime_2024": DatasetRecipe("HuggingFaceH4/aime_2024", None, ("train",), convert_aime),
    "geometry3k": DatasetRecipe("hiyouga/geometry3k", None, ("train", "validation", "test"),
                                convert_geometry3k),
}


def load_records(
    source: str, split: str, config: str | None = None, cache_dir: Path | None = None
) -> Iterable[Mapping[str, Any]]:
    """Records of one split, via `datasets.load_dataset`: a hub id, a local dataset directory, or a
    local .parquet/.jsonl/.json/.csv file (which is taken whole, whatever the split)."""
    from datasets import load_dataset

    cache = str(cache_dir) if cache_dir else None
    path = Path(source)
    if path.is_file():
        if path.suffix not in LOCAL_FORMATS:
            raise ValueError(f"{source}: unsupported file type; use one of {sorted(LOCAL_FORMATS)}")
        return load_dataset(
            LOCAL_FORMATS[path.suffix], data_files=str(path), split="train", cache_dir=cache
        )
    if path.is_dir():
        return load_dataset(str(path), split=split, cache_dir=cache)
    return load_dataset(source, config, split=split, cache_dir=cache)


def convert_records(
    records: Iterable[Mapping[str, Any]], recipe: DatasetRecipe, split: str
) -> Iterator[Row]:
    """Rows in the verl format; with `recipe.deduplicate`, repeated problems are kept once."""
    seen: set[str] = set()
    for index, record in enumerate(records):
        try:
            row = recipe.convert(record, index, split)
        except (KeyError, ValueError) as error:
            raise ValueError(f"{recipe.hub_path} {split} record {index}: {error}") from error
        if recipe.deduplicate:
            key = json.dumps([row["prompt"], row["reward_model"]["ground_truth"]])
            if key in seen:
                continue
            seen.add(key)
        yield row


def write_rows(rows: Sequence[Row], output: Path) -> None:
    """Write rows as parquet or jsonl, chosen by the output file's suffix."""
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(list(rows)), output)
    elif output.suffix == ".jsonl":
        with output.open("w") as handle:
            handle.writelines(json.dumps(row, default=_data_uri) + "\n" for row in rows)
    else:
        raise ValueError(f"{output}: output must end in .parquet or .jsonl")


def _data_uri(value: Any) -> str:
    """Image bytes in a jsonl row: a data URI (the row loader reads them back as bytes)."""
    if isinstance(value, bytes | bytearray):
        return "data:image/png;base64," + base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def prepare(
    name: str,
    output_dir: Path,
    source: str | None = None,
    splits: Sequence[str] | None = None,
    file_format: str = "parquet",
    cache_dir: Path | None = None,
) -> dict[str, Path]:
    """Convert one dataset's splits into `output_dir/NAME/SPLIT.FORMAT`; returns split -> file."""
    if name not in RECIPES:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(RECIPES)}")
    recipe = RECIPES[name]
    written = {}
    for split in splits or recipe.splits:
        records = load_records(source or recipe.hub_path, split, recipe.hub_config, cache_dir)
        rows = list(convert_records(records, recipe, split))
        if not rows:
            raise ValueError(f"{name} {split}: no rows in {source or recipe.hub_path}")
        output = output_dir / name / f"{split}.{file_format}"
        write_rows(rows, output)
        written[split] = output
        print(f"{name} {split}: {len(rows)} rows -> {output}")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m launch.prepare_data gsm8k math geometry3k --output-dir data`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("datasets", nargs="+", choices=sorted(RECIPES))
    parser.add_argument("--output-dir", type=Path, default=Path("data"))
    parser.add_argument("--source", default=None,
                        help="local file or directory instead of the hub id (one dataset only)")
    parser.add_argument("--split", action="append", default=None,
                        help="split(s) to convert (default: the dataset's usual splits)")
    parser.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="datasets' cache (default: ~/.cache/huggingface/datasets)")
    args = parser.parse_args(argv)
    if args.source and len(args.datasets) > 1:
        parser.error("--source names one dataset's files: convert one dataset per call")
    for name in args.datasets:
        try:
            prepare(name, args.output_dir, args.source, args.split, args.format, args.cache_dir)
        except ValueError as error:
            print(f"prepare_data: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
