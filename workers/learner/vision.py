"""Image inputs of a vision-language learner rank: the pixel inputs of each micro-batch,
recomputed by the rank's processor from the rows' encoded images (TrainBatch.images), and a
vision-tower call in every micro-batch.

The batch carries encoded images rather than the processor's outputs: a 32x32 PNG is ~300
bytes against 12 KB of float pixels, a Geometry3K figure ~10-40 KB against ~4.5 MB of Qwen2.5-VL
patches, and a prompt's n samples share one list. The engines and the learner load the same
processor from the same checkpoint, so the pixels are the ones the engine sampled with, and the
model itself checks that each row's image tokens match its image features.

Under ZeRO-3 the vision tower's parameters are gathered inside its forward, on every rank at
once; a rank whose micro-batch has no image (an empty micro-batch that only keeps the
collectives in step, or text-only rows) gets one extra row holding a blank image, outside the
loss, so every rank runs the tower in every forward (and under ZeRO 1-2 every rank has
gradients for the same parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from riskpo.batch import TrainBatch
from riskpo.models.vlm import concat_image_inputs, decode_image, image_inputs, image_text
from workers.learner.microbatch import MicroBatch

BLANK_IMAGE_SIZE = 32  # pixels; the processor resizes it to what the tower takes


class ImageInputs:
    """Pixel inputs for the micro-batches of one rank (processor: the checkpoint's)."""

    def __init__(self, processor: Any) -> None:
        from PIL import Image

        self.processor = processor
        self._cache: dict[tuple[bytes, ...], dict[str, torch.Tensor]] = {}
        blank = Image.new("RGB", (BLANK_IMAGE_SIZE, BLANK_IMAGE_SIZE), "white")
        rendered = processor(text=[image_text(processor)], images=[blank], return_tensors="pt")
        self.blank_ids: list[int] = rendered["input_ids"][0].tolist()
        self.blank_pixels = image_inputs(processor, [blank])

    def new_batch(self) -> None:
        """Forgets the previous step's pixels (a step's rows share them across samples)."""
        self._cache.clear()

    def attach(self, micro: MicroBatch, batch: TrainBatch, rows: Sequence[int],
               pad_token_id: int) -> MicroBatch:
        """The micro-batch with the pixel inputs of its rows' images, in row order; with a
        blank-image row appended when none of its rows has an image."""
        images = batch.images or [[] for _ in range(len(batch))]
        pixels = concat_image_inputs([self._pixels(images[row]) for row in rows])
        if pixels:
            micro.vision = pixels
            return micro
        with_blank = append_row(micro, self.blank_ids, pad_token_id)
        with_blank.vision = dict(self.blank_pixels)
        return with_blank

    def _pixels(self, images: Sequence[bytes]) -> dict[str, torch.Tensor]:
        key = tuple(images)
        if key and key not in self._cache:
            self._cache[key] = image_inputs(self.processor, [decode_image(data) for data in key])
        return self._cache.get(key, {})


def append_row(micro: MicroBatch, token_ids: list[int], pad_token_id: int) -> MicroBatch:
    """The micro-batch with one more row of token_ids that carries no loss (response mask,
    advantage, log-probs, weight and selection 0); existing rows keep their slots."""
    width = max(micro.input_ids.shape[1], len(token_ids))
    row_ids = torch.full((1, width), pad_token_id, dtype=torch.long)
    row_ids[0, : len(token_ids)] = torch.tensor(token_ids, dtype=torch.long)
    row_mask = torch.zeros((1, width), dtype=torch.long)
    row_mask[0, : len(token_ids)] = 1

    def widen(tensor: torch.Tensor | None, fill: float | bool, row_width: int) -> torch.Tensor | None:
        if tensor is None:
            return None
        padded = torch.nn.functional.pad(tensor, (0, row_width - tensor.shape[1]), value=fill)
        return torch.cat([padded, torch.full((1, row_width), fill, dtype=tensor.dtype)])

    def extend(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else torch.cat([tensor, tensor.new_zeros(1)])

    return MicroBatch(
        input_ids=torch.cat([torch.nn.functional.pad(micro.input_ids, (0, width - micro.input_ids.shape[1]),
                                                     value=pad_token_id), row_ids]),
        attention_mask=torch.cat([torch.nn.functional.pad(
            micro.attention_mask, (0, width - micro.attention_mask.shape[1])), row_mask]),
        response_mask=widen(micro.response_mask, False, width - 1),
        response_positions=widen(micro.response_positions, False, width - 1),
        advantages=extend(micro.advantages),
        rollout_logprobs=widen(micro.rollout_logprobs, 0.0, width - 1),
        old_logprobs=widen(micro.old_logprobs, 0.0, width - 1),
        ref_logprobs=widen(micro.ref_logprobs, 0.0, width - 1),
        loss_weights=extend(micro.loss_weights),
        selected=widen(micro.selected, False, width - 1),
    )
