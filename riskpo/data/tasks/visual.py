"""The synthetic visual task: an image shows two numbers, one above the other; the answer is
their sum ("<image>sum=" -> "12" for 4 and 8), graded by the math verifier on the last number
of the response. The embedded multimodal default trains the tiny vision-language model on it
(its warm start also reads the digits: visual_warmstart_maker).

The image is a 2 x 2 grid of square cells, so that the tiny model's vision tower, whose patches
are the cells, sees at most one digit per image token: with `digits: 1` (the default) each
number is drawn in one cell of its row, the column chosen at random (the other cell blank);
with `digits: 2` the numbers fill their rows. Digits are drawn with PIL from a 3x5 pixel font
defined here (no font file: an image is the same on every machine), scaled, placed and coloured
by a random stream seeded with the problem and its drawing number. A row is one drawing; the
held-out split holds drawings never seen in training (its rows' prompt_keys, text plus image
digest, are excluded), as a digit-recognition test set holds unseen images. Shifting digits
inside their cells (`jitter`) makes the random vision tower far slower to learn: with a 2-pixel
jitter the warm start was still at chance after 350 steps, centred it reads the digits by ~300.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from riskpo.data.registry import GeneratedTask, ProblemMaker, register_task
from riskpo.data.rows import IMAGE_PLACEHOLDER, Row
from riskpo.data.synthetic import SyntheticProblem
from riskpo.options import require

VISUAL_SOURCE = "synthetic/visual_sum"  # the rows' data_source
PROMPT_TEXT = f"{IMAGE_PLACEHOLDER}sum="
DRAWINGS = 10_000  # drawing numbers per pair of numbers
READ_PROMPT_TEXT = f"{IMAGE_PLACEHOLDER}read="  # the warm start's reading problems
GRID = 2  # cells a side

# 3x5 glyphs, one string of 15 bits per digit, row by row
GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001010010010", "8": "111101111101111",
    "9": "111101111001111",
}
GLYPH_WIDTH, GLYPH_HEIGHT = 3, 5


@dataclass
class VisualOptions:
    """`data.<split>.options.*` of the visual sum task. The images are square, 2 cells a side
    (model.tiny.vision.image_size = 2 * cell, patch_size = cell)."""

    digits: int = 1  # of each number (1 or 2)
    cell: int = 12  # pixels a side of the cell each digit is drawn in
    scale: int = 2  # pixels per glyph pixel (a digit is 3*scale x 5*scale)
    jitter: int = 0  # random shift of each digit inside its cell, pixels each way (0: centred)
    colours: bool = True  # random background and ink colours (false: black on white)

    def check(self, key: str) -> None:
        require(self.digits in (1, 2), f"{key}.digits", f"{self.digits}: use 1 or 2")
        require(self.scale >= 1, f"{key}.scale", "must be >= 1")
        require(self.jitter >= 0, f"{key}.jitter", "must be >= 0")
        need = GLYPH_HEIGHT * self.scale
        require(self.cell >= need, f"{key}.cell",
                f"{self.cell} px cannot hold a digit {need} px high (scale {self.scale})",
                f"use at least {need}")

    @property
    def image_size(self) -> int:
        return GRID * self.cell


def render_numbers(first: int | None, second: int | None, config: VisualOptions,
                   drawing: int = 0) -> bytes:
    """PNG bytes of an image showing `first` above `second` (None: that row blank), one digit
    per cell (columns, shifts and colours drawn from a stream seeded with the numbers, the
    drawing number and the image settings)."""
    from PIL import Image, ImageDraw

    rng = random.Random(f"visual:{first}:{second}:{drawing}:{config.digits}:{config.cell}:"
                        f"{config.scale}:{config.jitter}:{config.colours}")
    background = tuple(rng.randint(190, 255) for _ in range(3))
    ink = tuple(rng.randint(0, 90) for _ in range(3))
    if not config.colours:
        background, ink = (255, 255, 255), (0, 0, 0)
    image = Image.new("RGB", (config.image_size, config.image_size), background)
    draw = ImageDraw.Draw(image)
    width, height = GLYPH_WIDTH * config.scale, GLYPH_HEIGHT * config.scale
    room_x, room_y = (config.cell - width) // 2, (config.cell - height) // 2
    for row, number in enumerate((first, second)):
        start = rng.randrange(GRID - config.digits + 1)  # a 1-digit number's column
        if number is None:
            continue
        for column, digit in enumerate(f"{number:0{config.digits}d}", start=start):
            shift_x = rng.randint(-min(config.jitter, room_x), min(config.jitter, room_x))
            shift_y = rng.randint(-min(config.jitter, room_y), min(config.jitter, room_y))
            left = column * config.cell + room_x + shift_x
            top = row * config.cell + room_y + shift_y
            _draw_digit(draw, digit, left, top, config.scale, ink)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _draw_digit(draw, digit: str, left: int, top: int, scale: int, ink: tuple[int, ...]) -> None:
    for index, bit in enumerate(GLYPHS[digit]):
        if bit == "1":
            row, column = divmod(index, GLYPH_WIDTH)
            x, y = left + column * scale, top + row * scale
            draw.rectangle([x, y, x + scale - 1, y + scale - 1], fill=ink)


def visual_problem(rng: random.Random, config: VisualOptions) -> SyntheticProblem:
    """One problem: two random numbers of config.digits digits drawn in an image (one of
    DRAWINGS drawings of the pair); the reference response is their sum."""
    low, high = (0 if config.digits == 1 else 10 ** (config.digits - 1)), 10**config.digits - 1
    first, second = rng.randint(low, high), rng.randint(low, high)
    drawing = rng.randrange(DRAWINGS)
    answer = str(first + second)
    row = Row(
        prompt=PROMPT_TEXT,
        data_source=VISUAL_SOURCE,
        reward_model={"style": "rule", "ground_truth": answer},
        extra_info={"answer_format": "final_number", "operands": [first, second],
                    "drawing": drawing},
        images=(render_numbers(first, second, config, drawing),),
    )
    return SyntheticProblem(row, answer)


def visual_warmstart_maker(config: VisualOptions, exclude_prompts: set[str],
                           read_fraction: float = 0.5) -> ProblemMaker:
    """The warm start's training stream: sum problems, and with read_fraction odds a reading:
    "<image>read=" of the same image -> "4+8", or (half of the readings) of an image with one of
    its numbers only -> "4" (reading the digits is what the random vision tower must learn
    first, and a lone number teaches it whatever the language model attends to). A problem
    whose sum prompt is in exclude_prompts (held out) is never drawn, in any form."""

    def make(rng: random.Random) -> SyntheticProblem:
        while True:
            problem = visual_problem(rng, config)
            if problem.row.prompt_key not in exclude_prompts:
                break
        if rng.random() >= read_fraction:
            return problem
        first, second = problem.row.extra_info["operands"]
        drawing = problem.row.extra_info["drawing"]
        if rng.random() < 0.5:
            text, images = f"{first}+{second}", problem.row.images
        else:
            kept = rng.choice((0, 1))
            text = str((first, second)[kept])
            images = (render_numbers(first if kept == 0 else None, second if kept == 1 else None,
                                     config, drawing),)
        reading = Row(prompt=READ_PROMPT_TEXT, data_source=VISUAL_SOURCE,
                      reward_model={"style": "rule", "ground_truth": text},
                      extra_info={"answer_format": "final_number"}, images=images)
        return SyntheticProblem(reading, text)

    return make


@register_task
class Visual(GeneratedTask):
    name = "synthetic_visual"
    options = VisualOptions
    verifier = "math"
    row_source = VISUAL_SOURCE
    tiny_model = "vision"
    settings_key = "visual"

    def problem(self, rng: random.Random, options: VisualOptions) -> SyntheticProblem:
        return visual_problem(rng, options)

    def warmstart_training(self, options: VisualOptions, exclude_prompts: set[str],
                           problems: ProblemMaker) -> ProblemMaker:
        """Sums, and readings of the same kind of images."""
        return visual_warmstart_maker(options, exclude_prompts)

    def check_image_size(self, options: VisualOptions, image_size: int, key: str) -> None:
        require(options.image_size == image_size, f"{key}.options.cell",
                f"images of {options.image_size} px, but model.tiny.vision.image_size="
                f"{image_size}", "use 2 * cell == image_size (one digit per patch)")
