"""Turns a dataset config into checked rows: local jsonl/parquet files in the verl format,
the synthetic tasks, or the built-in package datasets (HumanEval, champ)."""

from __future__ import annotations

import glob
import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from riskpo.config import DataConfig, DatasetConfig
from riskpo.data.rows import Row, RowError, parse_row

FILE_SUFFIXES = {"jsonl": (".jsonl", ".json"), "parquet": (".parquet",)}


def load_dataset(config: DatasetConfig, exclude_prompts: Iterable[str] = ()) -> list[Row]:
    """All rows of one dataset config, checked; synthetic rows avoid `exclude_prompts`."""
    if config.source in ("synthetic_arithmetic", "synthetic_code"):
        from riskpo.data.synthetic import generate_rows, problem_maker

        if config.size is None or config.size < 1:
            raise ValueError(f"{config.source}: size must be a positive number of rows")
        make = problem_maker(config.source, config.arithmetic, config.code)
        return generate_rows(make, config.size, config.seed, exclude_prompts)
    if config.source in FILE_SUFFIXES:
        rows = [row for path in resolve_files(config.files, config.source) for row in read_rows(path)]
    elif config.source == "humaneval":
        from riskpo.data.builtin import humaneval_rows

        rows = humaneval_rows()
    elif config.source == "champ":
        from riskpo.data.builtin import champ_rows

        rows = champ_rows()
    else:
        raise ValueError(f"unknown data source {config.source!r}")
    return _take(rows, config.size, config.seed)


def load_train_and_eval(config: DataConfig) -> tuple[list[Row], list[Row]]:
    """Training and held-out rows; synthetic training rows never repeat an eval prompt."""
    eval_rows = load_dataset(config.eval)
    train_rows = load_dataset(config.train, exclude_prompts=[row.prompt_key for row in eval_rows])
    return train_rows, eval_rows


def resolve_files(patterns: list[str], source: str) -> list[Path]:
    """Files named by paths, directories (their files with the source's suffix) or globs."""
    if not patterns:
        raise ValueError(f"data source {source!r} needs files: data.<split>.files=[path, ...]")
    suffixes = FILE_SUFFIXES[source]
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.suffix in suffixes)
        else:
            matches = sorted(Path(p) for p in glob.glob(str(path)))
        if not matches:
            raise FileNotFoundError(f"data files: nothing matches {pattern!r} (source {source})")
        found.extend(matches)
    return found


def read_rows(path: str | Path) -> list[Row]:
    """Checked rows of one .jsonl/.json or .parquet file; the first bad row raises RowError."""
    path = Path(path)
    raw_rows = _read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)
    return [parse_row(raw, str(path), number) for number, raw in raw_rows]


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise RowError(str(path), number, "<json>", f"not valid JSON: {error}") from None


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    yield from enumerate(pq.read_table(path).to_pylist(), start=1)


def _take(rows: list[Row], size: int | None, seed: int) -> list[Row]:
    """All rows, or a seeded random subset of `size` of them (in their original order)."""
    if size is None or size >= len(rows):
        return rows
    if size < 1:
        raise ValueError(f"dataset size must be >= 1 or null, got {size}")
    keep = sorted(random.Random(seed).sample(range(len(rows)), size))
    return [rows[index] for index in keep]
