"""Rows read from local files in the verl format (riskpo/data/rows.py): `jsonl` (.jsonl/.json)
and `parquet`, e.g. what launch/prepare_data.py writes. Each row's shape says which verifier
grades it (tests: code; reward_model: math), unless its data_source is a registered task's, which
then grades and measures it (the TinyZero "countdown" rows, for one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from riskpo.data.files import read_rows, resolve_files, take_rows
from riskpo.data.registry import SplitRequest, Task, register_task
from riskpo.data.rows import Row
from riskpo.options import ConfigError, require


@dataclass
class FilesOptions:
    """`data.<split>.options.*` of the file tasks."""

    files: list[str] = field(default_factory=list)  # files, directories or globs

    def check(self, key: str) -> None:
        require(bool(self.files), f"{key}.files", "names no file", "e.g. [data/gsm8k/train.parquet]")


class _FileRows(Task):
    """Rows of files of one format; `size` keeps a seeded subset of them (null: all)."""

    options = FilesOptions
    verifier = None  # each row's shape says
    suffixes: ClassVar[tuple[str, ...]]

    def check(self, options: FilesOptions, split: SplitRequest, key: str) -> None:
        options.check(f"{key}.options")
        try:
            resolve_files(options.files, self.suffixes, self.name)
        except (ValueError, FileNotFoundError) as error:
            raise ConfigError(f"{key}.options.files", str(error),
                              "name existing files, dirs or globs") from None
        require(split.size is None or split.size >= 1, f"{key}.size", "must be >= 1, or null for all rows")

    def rows(self, options: FilesOptions, split: SplitRequest) -> list[Row]:
        paths = resolve_files(options.files, self.suffixes, self.name)
        return take_rows([row for path in paths for row in read_rows(path)], split.size, split.seed)


@register_task
class JsonlFiles(_FileRows):
    name = "jsonl"
    suffixes = (".jsonl", ".json")


@register_task
class ParquetFiles(_FileRows):
    name = "parquet"
    suffixes = (".parquet",)
