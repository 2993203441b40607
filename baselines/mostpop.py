"""MostPop: rank items by their number of training interactions (the sanity floor)."""

from __future__ import annotations

from benchmark.recbole_compat import import_recbole

import_recbole()

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from benchmark.contract import Capabilities


class ItemPrior(SequentialRecommender):
    """One score per item, the same for every user (counting floors and controls): a subclass
    fills ``scores`` from the training split in ``fit_statistics``."""

    HARNESS = Capabilities(training="statistics")

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.register_buffer("scores", torch.zeros(self.n_items))
        # RecBole's Trainer builds an optimiser, which needs at least one parameter.
        self.fake_loss = torch.nn.Parameter(torch.zeros(1))

    def fit_statistics(self, train_sequences) -> None:
        raise NotImplementedError

    def calculate_loss(self, interaction):
        """Nothing to learn under RecBole's own Trainer: a zero loss with a gradient path."""
        return self.fake_loss.sum() * 0.0

    def predict(self, interaction):
        return self.scores[interaction[self.ITEM_ID]]

    def full_sort_predict(self, interaction):
        batch = interaction[self.ITEM_SEQ].shape[0]
        return self.scores.unsqueeze(0).expand(batch, -1)


class MostPop(ItemPrior):
    """Popularity counts over the training split; the same score for every user."""

    @property
    def counts(self) -> torch.Tensor:
        return self.scores

    def fit_statistics(self, train_sequences) -> None:
        """Count every training interaction (the harness path: no gradient steps needed)."""
        counts = torch.zeros(self.n_items)
        for seq in train_sequences:
            counts.index_add_(0, torch.as_tensor(seq, dtype=torch.long), torch.ones(len(seq)))
        self.scores.copy_(counts)

    def calculate_loss(self, interaction):
        """Under RecBole's own Trainer: count the batch's target items."""
        items = interaction[self.POS_ITEM_ID]
        self.scores.index_add_(0, items, torch.ones_like(items, dtype=self.scores.dtype))
        return super().calculate_loss(interaction)
