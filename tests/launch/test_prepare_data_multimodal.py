"""prepare_data geometry3k on small local files shaped like the hub's hiyouga/geometry3k: figures
as undecoded parquet structs or as a `datasets` Image column; the rows it writes load as
multimodal rows (images decoded, one per placeholder) in parquet and jsonl."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from launch import prepare_data
from riskpo.data import read_rows


def png(color: str, size: tuple[int, int] = (20, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


GEO3K = [
    {"images": [{"bytes": png("red"), "path": None}], "answer": "3",
     "problem": "<image>Find x. Round to the nearest tenth."},
    {"images": [{"bytes": png("blue"), "path": "fig2.png"}], "answer": "\\frac{7}{2}",
     "problem": "Find the area of the figure."},  # no placeholder: one is put first
]


def test_geometry3k_from_a_local_parquet_of_image_structs(tmp_path):
    source = tmp_path / "geo3k.parquet"
    pq.write_table(pa.Table.from_pylist(GEO3K), source)
    written = prepare_data.prepare("geometry3k", tmp_path / "out", str(source), ["test"],
                                   cache_dir=tmp_path / "cache")
    rows = read_rows(written["test"])
    assert [row.images for row in rows] == [(png("red"),), (png("blue"),)]
    assert [row.ground_truth for row in rows] == ["3", "\\frac{7}{2}"]
    first, second = (row.prompt[0]["content"] for row in rows)
    assert first.startswith("<image>Find x.") and "\\boxed{}" in first
    assert second.startswith("<image>Find the area") and second.count("<image>") == 1
    assert rows[0].extra_info["answer_format"] == "boxed" and rows[0].data_source == "hiyouga/geometry3k"


def test_geometry3k_from_a_dataset_folder_with_an_image_column_to_jsonl(tmp_path):
    import datasets

    features = datasets.Features({"images": datasets.Sequence(datasets.Image()),
                                  "problem": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    records = {"images": [[Image.new("RGB", (9, 9), "green")]], "problem": ["<image>Find y."],
               "answer": ["12"]}
    folder = tmp_path / "geometry3k"
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(records, features=features).to_parquet(
        str(folder / "data" / "train-00000-of-00001.parquet"))
    written = prepare_data.prepare("geometry3k", tmp_path / "out", str(folder), ["train"],
                                   "jsonl", tmp_path / "cache")
    (row,) = read_rows(written["train"])  # images travel as data URIs in jsonl
    decoded = Image.open(io.BytesIO(row.images[0]))
    assert decoded.size == (9, 9) and decoded.convert("RGB").getpixel((0, 0)) == (0, 128, 0)
    assert row.ground_truth == "12"


def test_geometry3k_record_with_more_placeholders_than_images_is_named(tmp_path):
    source = tmp_path / "bad.parquet"
    bad = [{"images": [{"bytes": png("red"), "path": None}], "answer": "1",
            "problem": "<image><image>Find x."}]
    pq.write_table(pa.Table.from_pylist(bad), source)
    with pytest.raises(ValueError, match=r"record 0: 2 <image> placeholders for 1 image"):
        prepare_data.prepare("geometry3k", tmp_path / "out", str(source), ["train"],
                             cache_dir=tmp_path / "cache")
