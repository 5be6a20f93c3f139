"""Multimodal rows: images by path, data URI, bytes and {"bytes", "path"} in jsonl and parquet,
bad images named by file, row and field, prompt lengths that count image tokens, and the
synthetic visual task with its held-out split."""

from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from riskpo.data import RowError, read_rows
from riskpo.data.loaders import DataConfig, DatasetConfig, load_train_and_eval
from riskpo.data.tasks.visual import VisualOptions, render_numbers, visual_problem
from riskpo.data.templates import build_prompt, check_prompt_lengths
from riskpo.models.config import TinyVisionConfig
from riskpo.models.loading import prompt_length_counter
from riskpo.models.tiny import build_tiny_processor, build_tokenizer
from riskpo.models.vlm import decode_image, render_image_prompt


def png(color: str = "red", size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def math_row(prompt, images) -> dict:
    return {"prompt": prompt, "data_source": "geo", "images": images,
            "reward_model": {"style": "rule", "ground_truth": "3"},
            "extra_info": {"index": 0}}  # arrow cannot write an empty struct


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_images_by_relative_path_and_data_uri_become_bytes(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(png("red"))
    uri = "data:image/png;base64," + base64.b64encode(png("blue")).decode()
    chat = [{"role": "user", "content": "<image>Find x. Compare <image>."}]
    path = write_jsonl(tmp_path / "rows.jsonl", [math_row(chat, ["figures/a.png", uri])])
    (row,) = read_rows(path)
    assert row.images == (png("red"), png("blue"))
    assert decode_image(row.images[1]).getpixel((0, 0)) == (0, 0, 255)
    prompt = build_prompt(row, "chat")
    assert prompt.images == [png("red"), png("blue")]
    other = read_rows(write_jsonl(tmp_path / "other.jsonl", [math_row(chat, [uri, uri])]))[0]
    assert other.prompt_key != row.prompt_key  # the same text with other images: another question


def test_parquet_images_as_bytes_or_image_structs_round_trip(tmp_path):
    structs = math_row("<image>x=", [{"bytes": png("green"), "path": None}])
    raw = math_row("<image>y=", [png("white")])
    pq.write_table(pa.Table.from_pylist([structs]), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pylist([raw]), tmp_path / "b.parquet")
    (first,) = read_rows(tmp_path / "a.parquet")
    (second,) = read_rows(tmp_path / "b.parquet")
    assert first.images == (png("green"),) and second.images == (png("white"),)
    pq.write_table(pa.Table.from_pylist([first.to_dict()]), tmp_path / "again.parquet")
    assert read_rows(tmp_path / "again.parquet") == [first]


@pytest.mark.parametrize(("images", "field", "problem"), [
    (["missing.png"], "images[0]", "cannot read image file"),
    ([base64.b64encode(b"not an image").decode()], "images[0]", "cannot read image file"),
    (["data:image/png;base64," + base64.b64encode(b"not an image").decode()], "images[0]",
     "not a decodable image"),
    ([{"bytes": None, "path": None}], "images[0]", "needs non-empty 'bytes' or 'path'"),
    ([], "images", "0 image(s) but 1 <image> placeholder"),
    ("figure.png", "images", "expected a list of images"),
])
def test_bad_images_name_file_row_and_field(tmp_path, images, field, problem):
    good = math_row("<image>x=", ["data:image/png;base64," + base64.b64encode(png()).decode()])
    path = write_jsonl(tmp_path / "rows.jsonl", [good, math_row("<image>x=", images)])
    with pytest.raises(RowError) as error:
        read_rows(path)
    assert (error.value.origin, error.value.row_number, error.value.field_name) == (str(path), 2, field)
    assert problem in str(error.value)


def test_truncated_png_bytes_in_parquet_are_named(tmp_path):
    pq.write_table(pa.Table.from_pylist([math_row("<image>x=", [png()[:40]])]), tmp_path / "t.parquet")
    with pytest.raises(RowError, match=r"row 1, field 'images\[0\]': not a decodable image"):
        read_rows(tmp_path / "t.parquet")


def test_more_placeholders_than_images_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [math_row("<image><image>x=", [png().hex()])])
    with pytest.raises(RowError, match="1 image.*2 <image> placeholder"):
        read_rows(path)


def test_prompt_length_counts_image_tokens():
    vision = TinyVisionConfig()
    processor = build_tiny_processor(vision)
    row = visual_problem(random.Random(0), VisualOptions()).row
    tokens = render_image_prompt(build_prompt(row, "plain"), processor).token_ids
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert tokens.count(image_token) == vision.image_tokens == 4
    assert len(tokens) == vision.image_tokens + len("sum=")
    check_prompt_lengths([row], prompt_length_counter(processor), "plain", len(tokens), "visual")  # fits exactly
    with pytest.raises(RowError, match="renders to 8 tokens .image tokens of its 1 image"):
        check_prompt_lengths([row], prompt_length_counter(processor), "plain", len(tokens) - 1, "visual")
    with pytest.raises(ValueError, match="not a vision-language model"):
        check_prompt_lengths([row], prompt_length_counter(build_tokenizer()), "plain", 64, "visual")


def test_visual_task_rows_are_drawings_and_the_held_out_drawings_are_new():
    config = VisualOptions()
    problem = visual_problem(random.Random(5), config)
    first, second = problem.row.extra_info["operands"]
    drawing = problem.row.extra_info["drawing"]
    assert problem.reference_response == problem.row.ground_truth == str(first + second)
    assert problem.row.images == (render_numbers(first, second, config, drawing),)
    assert render_numbers(first, second, config, drawing + 1) != problem.row.images[0]
    image = decode_image(problem.row.images[0])
    assert image.size == (config.image_size, config.image_size) == (24, 24)
    assert len(image.getcolors()) == 2  # background and ink: digits are drawn
    data = DataConfig(train=DatasetConfig(source="synthetic_visual", size=500),
                      eval=DatasetConfig(source="synthetic_visual", size=100, seed=1))
    train, held_out = load_train_and_eval(data)
    assert len({row.images for row in train}) == 500 and len(held_out) == 100
    assert not {row.images for row in train} & {row.images for row in held_out}
    assert {tuple(row.extra_info["operands"]) for row in train} <= {
        (a, b) for a in range(10) for b in range(10)}


def test_two_digit_numbers_fill_their_rows():
    config = VisualOptions(digits=2)
    problem = visual_problem(random.Random(0), config)
    first, second = problem.row.extra_info["operands"]
    assert 10 <= first <= 99 and 10 <= second <= 99
    cells = decode_image(problem.row.images[0])
    for left, top in ((0, 0), (12, 0), (0, 12), (12, 12)):  # a digit in every cell
        assert len(cells.crop((left, top, left + 12, top + 12)).getcolors()) == 2
