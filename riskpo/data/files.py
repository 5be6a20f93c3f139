"""Reading rows from files in the verl format (jsonl/json and parquet, checked row by row), the
files a config names (paths, directories or globs), and a seeded subset of a dataset's rows."""

from __future__ import annotations

import glob
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from riskpo.data.rows import Row, RowError, decimal_floats, parse_row


def resolve_files(patterns: Sequence[str], suffixes: Sequence[str], source: str) -> list[Path]:
    """Files named by paths, directories (their files with one of `suffixes`) or globs."""
    if not patterns:
        raise ValueError(f"data source {source!r} needs files: data.<split>.options.files=[path, ...]")
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
    """Raw rows of a jsonl file. Non-integer numbers are read as Decimals, so a numeric
    ground_truth keeps the exact text the file has (0.00001, never the float 1e-05);
    parse_row turns the other Decimals back into floats."""
    from decimal import Decimal

    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line, parse_float=Decimal)
            except json.JSONDecodeError as error:
                raise RowError(str(path), number, "<json>", f"not valid JSON: {error}") from None


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    """Raw rows of a parquet file. A parquet float is binary: each becomes the Decimal of its
    shortest round-trip repr at its column's precision (rows.decimal_floats), the decimal an
    author wrote, never exponent notation once parse_row spells a ground_truth out."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for number, row in enumerate(table.to_pylist(), start=1):
        yield number, {field.name: decimal_floats(row[field.name], field.type)
                       for field in table.schema}


def take_rows(rows: list[Row], size: int | None, seed: int) -> list[Row]:
    """All rows, or a seeded random subset of `size` of them (in their original order)."""
    if size is None or size >= len(rows):
        return rows
    if size < 1:
        raise ValueError(f"dataset size must be >= 1 or null, got {size}")
    keep = sorted(random.Random(seed).sample(range(len(rows)), size))
    return [rows[index] for index in keep]
