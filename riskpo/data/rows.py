"""The row format every dataset is turned into (verl-compatible) and its validation.

A row is a question with what the verifier needs to grade an answer to it:

    {"prompt": "12+345=" | [{"role": "user", "content": "..."}],
     "data_source": "synthetic/arithmetic",
     "reward_model": {"style": "rule", "ground_truth": "357"},        # math rows
     "tests": {"style": "call", "fn_name": "f",                         # code rows
               "cases": [{"args": [1], "expected": 5}], "prefix": ""},
     "extra_info": {"answer_format": "final_number", ...}}

A math row has `reward_model`; a code row has `tests` in the code verifier's styles (`call`:
the program defines `fn_name`, called with each case's args; `stdio`: it reads each case's
`stdin` and must print its `stdout`; `assert`: a HumanEval-style `test` source whose
`check(candidate)` gets `entry_point`). `prefix` is code that goes before the response to
make the program (a HumanEval prompt; empty when the response is the whole program). `extra_info.answer_format` tells the math verifier where the
answer is: `final_number` (the last number in the response), `boxed` (the last \\boxed{}),
or `gsm8k` ("#### n"). A numeric `ground_truth` becomes its exact decimal text, never exponent
notation (jsonl keeps the file's digits, parquet a float's shortest round-trip decimal at its
column's precision: `number_text`, `decimal_floats`); a blank one is refused.

A multimodal row (verl's format) adds `images`, a list of images in the order of the
`<image>` placeholders in its prompt text (one placeholder per image): each an encoded image
(bytes; a parquet binary), `{"bytes": ..., "path": ...}` (how Hugging Face datasets store an
Image column), a `data:image/...;base64,` URI, or a path (relative paths are relative to the
data file's directory). Every image is read and decoded at load time; the Row keeps its encoded
bytes, which travel with the prompt to the engines and with the batch to the learner.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from riskpo.messages import number_text

ANSWER_FORMATS = ("final_number", "boxed", "gsm8k")
CODE_STYLES = ("call", "stdio", "assert")
CHAT_ROLES = ("system", "user", "assistant")
IMAGE_PLACEHOLDER = "<image>"  # where an image goes in a multimodal row's prompt text


class RowError(ValueError):
    """A row that cannot be used: names the file, the row number (1-based) and the field."""

    def __init__(self, origin: str, row_number: int, field_name: str, problem: str) -> None:
        self.origin, self.row_number, self.field_name = origin, row_number, field_name
        super().__init__(f"{origin}, row {row_number}, field {field_name!r}: {problem}")


@dataclass(frozen=True)
class Row:
    """One question in the verl row format (see the module docstring)."""

    prompt: str | list[dict[str, str]]
    data_source: str
    reward_model: dict[str, Any] | None = None  # math: {"style", "ground_truth"}
    tests: dict[str, Any] | None = None  # code: {"style", "fn_name", "cases", "prefix"}
    extra_info: dict[str, Any] = field(default_factory=dict)
    images: tuple[bytes, ...] = ()  # encoded images, one per IMAGE_PLACEHOLDER in the prompt
    # where the row came from (file, 1-based row), for error messages; not part of the row
    origin: str = field(default="", compare=False, repr=False)
    row_number: int = field(default=0, compare=False, repr=False)

    @property
    def verifier(self) -> Literal["math", "code"]:
        """Which verifier kind the row's shape asks for: code for tests, math for reward_model
        (its task may say more: riskpo.data.registry.verification_request)."""
        return "code" if self.tests is not None else "math"

    @property
    def ground_truth(self) -> str | None:
        return None if self.reward_model is None else str(self.reward_model["ground_truth"])

    @property
    def prompt_key(self) -> str:
        """A string that identifies the question (used to keep eval rows out of training): the
        prompt, and a digest of each image when the row has images."""
        text = self.prompt if isinstance(self.prompt, str) else json.dumps(self.prompt)
        digests = [hashlib.sha256(image).hexdigest()[:16] for image in self.images]
        return text if not digests else f"{text}#images:{','.join(digests)}"

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain dict (what jsonl/parquet files hold)."""
        out: dict[str, Any] = {"prompt": self.prompt, "data_source": self.data_source}
        if self.reward_model is not None:
            out["reward_model"] = self.reward_model
        if self.tests is not None:
            out["tests"] = self.tests
        out["extra_info"] = self.extra_info
        if self.images:
            out["images"] = [{"bytes": image, "path": None} for image in self.images]
        return out


def parse_row(raw: Any, origin: str, row_number: int) -> Row:
    """Checks one raw row (a dict from jsonl/parquet) and returns it as a Row; a bad row
    raises RowError naming origin, row number and field."""

    def fail(field_name: str, problem: str) -> RowError:
        return RowError(origin, row_number, field_name, problem)

    raw = _plain(raw)
    if not isinstance(raw, dict):
        raise fail("<row>", f"expected an object, got {type(raw).__name__}")
    prompt = _parse_prompt(raw.get("prompt"), fail)
    data_source = raw.get("data_source")
    if not isinstance(data_source, str) or not data_source:
        raise fail("data_source", f"expected a non-empty string, got {data_source!r}")
    reward_model = raw.get("reward_model")
    tests = raw.get("tests")
    if (reward_model is None) == (tests is None):
        raise fail("reward_model", "a row needs exactly one of reward_model (math) or tests (code)")
    if reward_model is not None:
        reward_model = _parse_reward_model(reward_model, fail)
    if tests is not None:
        tests = _parse_tests(_floats(tests), fail)
    extra_info = _floats(raw.get("extra_info") or {})
    if not isinstance(extra_info, dict):
        raise fail("extra_info", f"expected an object, got {type(extra_info).__name__}")
    answer_format = extra_info.get("answer_format")
    if answer_format is not None and answer_format not in ANSWER_FORMATS:
        raise fail("extra_info.answer_format", f"{answer_format!r} is not one of {ANSWER_FORMATS}")
    images = _parse_images(raw.get("images"), prompt, origin, fail)
    return Row(prompt, data_source, reward_model, tests, dict(extra_info), images,
               origin=origin, row_number=row_number)


def _plain(value: Any) -> Any:
    """Nested numpy arrays (how parquet returns lists) as plain Python lists."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _parse_prompt(prompt: Any, fail) -> str | list[dict[str, str]]:
    if isinstance(prompt, str):
        if not prompt:
            raise fail("prompt", "empty prompt")
        return prompt
    if not isinstance(prompt, list) or not prompt:
        raise fail("prompt", "expected a string or a non-empty list of chat messages")
    messages = []
    for index, message in enumerate(prompt):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise fail(f"prompt[{index}]", "a chat message is {'role': ..., 'content': ...}")
        if message["role"] not in CHAT_ROLES or not isinstance(message["content"], str):
            raise fail(f"prompt[{index}]", f"role must be one of {CHAT_ROLES}, content a string")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _parse_images(images: Any, prompt: str | list[dict[str, str]], origin: str,
                  fail) -> tuple[bytes, ...]:
    """The row's images as encoded bytes, each decoded once to check it; as many as the
    prompt has IMAGE_PLACEHOLDERs."""
    images = [] if images is None else images
    if not isinstance(images, list):
        raise fail("images", f"expected a list of images, got {type(images).__name__}")
    texts = [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]
    placeholders = sum(text.count(IMAGE_PLACEHOLDER) for text in texts)
    if placeholders != len(images):
        raise fail("images", f"{len(images)} image(s) but {placeholders} {IMAGE_PLACEHOLDER} "
                   "placeholder(s) in the prompt: put one placeholder where each image goes")
    encoded = []
    for index, image in enumerate(images):
        data = _image_bytes(image, Path(origin).parent if origin else Path.cwd(),
                            lambda problem, i=index: fail(f"images[{i}]", problem))
        try:
            check_image(data)
        except ValueError as error:
            raise fail(f"images[{index}]", str(error)) from None
        encoded.append(data)
    return tuple(encoded)


def _image_bytes(image: Any, base: Path, fail) -> bytes:
    """The encoded bytes of one image entry (bytes, {"bytes", "path"}, a data URI or a path)."""
    if isinstance(image, dict):
        if image.get("bytes") is not None:
            image = image["bytes"]
        elif image.get("path"):
            image = image["path"]
        else:
            raise fail("an image object needs non-empty 'bytes' or 'path'")
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    if not isinstance(image, str) or not image:
        raise fail(f"expected encoded bytes, a data URI or a path, got {type(image).__name__}")
    if image.startswith("data:"):
        _, _, payload = image.partition(";base64,")
        try:
            return base64.b64decode(payload, validate=True)
        except ValueError as error:
            raise fail(f"not a base64 data URI: {error}") from None
    path = Path(image).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        return path.read_bytes()
    except OSError as error:
        raise fail(f"cannot read image file {str(path)!r}: {error.strerror or error}") from None


def check_image(data: bytes) -> tuple[int, int]:
    """Decodes an encoded image fully; returns its (width, height). Raises ValueError saying
    what is wrong when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"not a decodable image ({len(data)} bytes): {error}") from None


def _parse_reward_model(reward_model: Any, fail) -> dict[str, Any]:
    """The reference answer as text: a string as given (a blank one is refused: nothing could
    be graded against it), a number by its exact decimal text (number_text)."""
    if not isinstance(reward_model, dict):
        raise fail("reward_model", f"expected an object, got {type(reward_model).__name__}")
    truth = reward_model.get("ground_truth")
    if isinstance(truth, str):
        if not truth.strip():
            raise fail("reward_model.ground_truth", f"blank reference answer {truth!r}: a row "
                       "needs an answer to grade against")
        text = truth
    else:
        try:
            text = number_text(truth)
        except ValueError as error:
            raise fail("reward_model.ground_truth",
                       f"expected a non-blank string or a finite number: {error}") from None
    return {"style": str(reward_model.get("style") or "rule"), "ground_truth": text}


def decimal_floats(value: Any, arrow_type: Any) -> Any:
    """A parquet value (from to_pylist) with each binary float replaced by the Decimal of its
    shortest round-trip repr at the column's own precision: float64 by repr, float32 and
    float16 through numpy (a float32 0.1 is Decimal("0.1"), not 0.10000000149011612). The
    decimal text an author wrote in a float column survives; _floats turns the Decimals
    outside ground_truth back into floats."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_floating(arrow_type):
        if arrow_type.bit_width == 64:
            return Decimal(repr(float(value)))
        import numpy as np

        width = np.float32 if arrow_type.bit_width == 32 else np.float16
        return Decimal(np.format_float_positional(width(value), unique=True, trim="-"))
    if pa.types.is_struct(arrow_type):
        return {field.name: decimal_floats(value.get(field.name), field.type)
                for field in arrow_type}
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) \
            or pa.types.is_fixed_size_list(arrow_type):
        return [decimal_floats(item, arrow_type.value_type) for item in value]
    return value


def _floats(value: Any) -> Any:
    """Decimals (how the readers keep numbers exact) as floats, where values are data."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {key: _floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_floats(item) for item in value]
    return value


def _parse_tests(tests: Any, fail) -> dict[str, Any]:
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as error:
            raise fail("tests", f"not valid JSON: {error}") from None
    if not isinstance(tests, dict):
        raise fail("tests", f"expected an object, got {type(tests).__name__}")
    style = tests.get("style")
    if style not in CODE_STYLES:
        raise fail("tests.style", f"{style!r} is not one of {CODE_STYLES}")
    prefix = tests.get("prefix") or ""
    if not isinstance(prefix, str):
        raise fail("tests.prefix", "expected a string of code")
    if style == "assert":
        for key in ("entry_point", "test"):
            if not isinstance(tests.get(key), str) or not tests[key]:
                raise fail(f"tests.{key}", "assert-style tests need non-empty strings entry_point and test")
        return {"style": style, "entry_point": tests["entry_point"], "test": tests["test"], "prefix": prefix}
    cases = tests.get("cases")
    if not isinstance(cases, list) or not cases:
        raise fail("tests.cases", "expected a non-empty list of test cases")
    if style == "call":
        fn_name = tests.get("fn_name")
        if not isinstance(fn_name, str) or not fn_name.isidentifier():
            raise fail("tests.fn_name", f"expected a Python identifier, got {fn_name!r}")
        for index, case in enumerate(cases):
            if not isinstance(case, dict) or not isinstance(case.get("args"), list) or "expected" not in case:
                raise fail(f"tests.cases[{index}]", "expected {'args': [...], 'expected': value}")
        return {"style": style, "fn_name": fn_name, "cases": cases, "prefix": prefix}
    for index, case in enumerate(cases):
        if not isinstance(case, dict) or not isinstance(case.get("stdin"), str) or not isinstance(
            case.get("stdout"), str
        ):
            raise fail(f"tests.cases[{index}]", "expected {'stdin': str, 'stdout': str}")
    return {"style": style, "cases": cases, "prefix": prefix}
