"""Controls: scorers that read no content and learn no sequence, built to expose a bias of the
benchmark rather than to recommend.

``ColdFirst`` scores every never-trained item 1 and every other item 0: all it knows is which
items are cold. On a world where cold items are targets more often per item than warm ones, or
under an evaluator that ranks cold targets among all items, it wins the cold cells without
reading anything; with equal target frequency (the synthetic world's default) and the cold-start
protocol (cold targets ranked among the never-trained items, ties scored by their expected
metric) it is exactly at chance on every cold cell and near chance overall. The world check
(:mod:`benchmark.worldcheck`) compares content models with it.
"""

from __future__ import annotations

from benchmark.recbole_compat import import_recbole

import_recbole()

import torch

from baselines.mostpop import ItemPrior


class ColdFirst(ItemPrior):
    """Score 1 for every item without a training interaction, 0 for the others (a control)."""

    @property
    def cold(self) -> torch.Tensor:
        return self.scores

    def fit_statistics(self, train_sequences) -> None:
        """Mark the items that occur in no training sequence (the padding id 0 stays 0)."""
        seen = torch.zeros(self.n_items, dtype=torch.bool)
        for seq in train_sequences:
            seen[torch.as_tensor(seq, dtype=torch.long)] = True
        cold = (~seen).float()
        cold[0] = 0.0
        self.scores.copy_(cold)
