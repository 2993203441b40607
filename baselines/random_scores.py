"""Random: uniform random scores, the floor every table is read against (docs/protocol.md, 11).

The scores of a case depend only on (run seed, user, length of the input sequence), through a
counter-based generator: the same under any batching or evaluation order, different between a
user's validation and test case (different history lengths) and between seeds.
"""

from __future__ import annotations

from benchmark.recbole_compat import import_recbole

import_recbole()

import numpy as np
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from benchmark.contract import Capabilities


class RandomScores(SequentialRecommender):
    """Seeded uniform random scores; nothing is learned (``fit_statistics`` is a no-op)."""

    input_type = InputType.POINTWISE

    HARNESS = Capabilities(training="statistics")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.seed = int(config["seed"])
        # RecBole's Trainer builds an optimiser, which needs at least one parameter.
        self.fake_loss = torch.nn.Parameter(torch.zeros(1))

    def fit_statistics(self, train_sequences) -> None:
        """Nothing to fit (the harness calls this for every model that is not trainable)."""

    def calculate_loss(self, interaction):
        """Under RecBole's own Trainer: nothing to learn, a zero loss with a gradient path."""
        return self.fake_loss.sum() * 0.0

    def full_sort_predict(self, interaction) -> torch.Tensor:
        users = interaction[self.USER_ID].tolist()
        lens = interaction[self.ITEM_SEQ_LEN].tolist()
        rows = [np.random.default_rng([self.seed, u, n]).random(self.n_items)
                for u, n in zip(users, lens)]
        return torch.from_numpy(np.stack(rows).astype(np.float32)).to(
            interaction[self.ITEM_SEQ].device)

    def predict(self, interaction) -> torch.Tensor:
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)
