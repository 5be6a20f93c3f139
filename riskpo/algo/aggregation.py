"""Loss aggregations by name (`algorithm.loss.aggregation`, docs/algorithm.md section 7): how the
per-token values of a mini-batch reduce to one number. Each is one object that defines both the
mini-batch's normaliser (its units: loss tokens, rows, or the rows' loss weights) and a
micro-batch's share of the mini-batch's aggregate, so that the shares of any micro-batch split,
on any number of ranks, add up to the aggregate of the whole mini-batch.

Shapes: values and mask [B, T] (mask: the loss tokens); weights [B], the estimator's
per-response loss weights, for the aggregations that declare needs_loss_weights.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch


class Aggregation(ABC):
    """A reduction of per-token values to a scalar: the sum of per-row contributions divided by
    the rows' units. Rows without loss tokens count as rows whose contribution is 0."""

    name: ClassVar[str]
    unit: ClassVar[str]  # what the normaliser counts, in words
    needs_loss_weights: ClassVar[bool] = False

    @abstractmethod
    def units(self, loss_tokens: Sequence[int], loss_weights: Sequence[float] | None) -> float:
        """The normaliser of a set of rows (a mini-batch over all its micro-batches and ranks):
        loss_tokens[i] is row i's number of loss tokens (0 for a row out of the loss),
        loss_weights[i] its weight. 0 when no row has a loss token: nothing to learn."""

    @abstractmethod
    def _row_sums(self, token_sums: torch.Tensor, token_counts: torch.Tensor,
                  weights: torch.Tensor | None) -> torch.Tensor:
        """Each row's contribution [B] from its masked token sum and token count [B]."""

    @abstractmethod
    def _own_units(self, mask: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor | float:
        """The normaliser of exactly the rows given (mask in the values' dtype)."""

    @abstractmethod
    def _mean(self, total: torch.Tensor, units: torch.Tensor | float) -> torch.Tensor:
        """total / units, the units lifted to at least one token or row (or the dtype's
        smallest normal weight), so rows without loss tokens give 0."""

    def reduce(self, values: torch.Tensor, mask: torch.Tensor,
               weights: torch.Tensor | None = None) -> torch.Tensor:
        """The aggregate of the rows given, a scalar in values' dtype."""
        if values.shape != mask.shape or values.dim() != 2:
            raise ValueError(f"aggregation {self.name} needs equal [B, T] shapes, got "
                             f"{tuple(values.shape)} and {tuple(mask.shape)}")
        if self.needs_loss_weights and weights is None:
            raise ValueError(f"aggregation {self.name} needs per-sequence loss weights")
        mask = mask.to(values.dtype)
        weights = None if weights is None else weights.to(values.dtype)
        row_sums = self._row_sums((values * mask).sum(dim=-1), mask.sum(dim=-1), weights)
        return self._mean(row_sums.sum(), self._own_units(mask, weights))

    def share(self, values: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None,
              loss_units: float) -> torch.Tensor:
        """A micro-batch's share of its mini-batch's aggregate, whose normaliser (units over
        all micro-batches and ranks) is loss_units: the micro-batch's own aggregate scaled by
        its own units / loss_units. The shares of any split add up to the mini-batch's reduce."""
        weights = None if weights is None else weights.to(values.dtype)
        own = float(self._own_units(mask.to(values.dtype), weights))
        return self.reduce(values, mask, weights) * (own / loss_units)


class TokenMean(Aggregation):
    """Sum over all loss tokens / number of loss tokens (each token weighs the same)."""

    name = "token_mean"
    unit = "loss tokens"

    def units(self, loss_tokens: Sequence[int], loss_weights: Sequence[float] | None) -> float:
        return float(sum(loss_tokens))

    def _row_sums(self, token_sums, token_counts, weights):
        return token_sums

    def _own_units(self, mask, weights):
        return mask.sum()

    def _mean(self, total, units):
        return total / units.clamp(min=1)


class SeqMeanTokenSum(Aggregation):
    """Per-row token sum, averaged over rows (Dr.GRPO)."""

    name = "seq_mean_token_sum"
    unit = "rows"

    def units(self, loss_tokens: Sequence[int], loss_weights: Sequence[float] | None) -> float:
        return float(len(loss_tokens)) if any(count > 0 for count in loss_tokens) else 0.0

    def _row_sums(self, token_sums, token_counts, weights):
        return token_sums

    def _own_units(self, mask, weights):
        return float(mask.shape[0])

    def _mean(self, total, units):
        return total / max(float(units), 1.0)


class SeqMeanTokenMean(SeqMeanTokenSum):
    """Per-row token mean, averaged over rows."""

    name = "seq_mean_token_mean"

    def _row_sums(self, token_sums, token_counts, weights):
        return token_sums / token_counts.clamp(min=1)


class PaperMean(Aggregation):
    """RiskPO's loss (the ICLR paper): per-row token means weighted by the estimator's loss
    weights (1 / (papers x responses in the paper): the mean over papers of the mean over each
    paper's responses), divided by the rows' weight sum."""

    name = "paper_mean"
    unit = "loss weight"
    needs_loss_weights = True

    def units(self, loss_tokens: Sequence[int], loss_weights: Sequence[float] | None) -> float:
        if loss_weights is None:
            raise ValueError("aggregation paper_mean needs the estimator's loss weights in the batch")
        return float(sum(weight for weight, count in zip(loss_weights, loss_tokens, strict=True) if count > 0))

    def _row_sums(self, token_sums, token_counts, weights):
        return weights * token_sums / token_counts.clamp(min=1)

    def _own_units(self, mask, weights):
        return weights.sum()

    def _mean(self, total, units):
        return total / units.clamp(min=torch.finfo(total.dtype).tiny)


AGGREGATIONS: dict[str, Aggregation] = {
    aggregation.name: aggregation
    for aggregation in (TokenMean(), SeqMeanTokenSum(), SeqMeanTokenMean(), PaperMean())
}


def get_aggregation(name: str) -> Aggregation:
    """The registered aggregation `name`."""
    if name not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {tuple(AGGREGATIONS)}, got {name!r}")
    return AGGREGATIONS[name]
