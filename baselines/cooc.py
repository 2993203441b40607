"""Co-occurrence: a counting sequential baseline (item-to-item transitions over recent items).

From the training split only: ``P(b | a)``, the share of the training transitions out of item
``a`` that go to ``b`` (``a`` immediately followed by ``b`` in a user's training sequence), and
the popularity share ``P(b)``. A case whose last input items are ``s_1`` (most recent), ``s_2``,
... scores item ``b`` by

    score(b) = sum_{k < window} decay^k * P(b | s_{k+1})  +  backoff * P(b)

(an interpolated first-order Markov chain over a decayed window of the history). Nothing is
trained by gradient: ``fit_statistics`` counts, as for MostPop, and the counts are rebuilt from
the split (also by ``load_run``) rather than stored with the run's weights.
"""

from __future__ import annotations

from benchmark.recbole_compat import import_recbole

import_recbole()

import numpy as np
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from benchmark.contract import Capabilities
from benchmark.errors import ConfigError


class CoOccurrence(SequentialRecommender):
    """Decayed sum of normalised transition counts from the last ``window`` items, with a
    popularity back-off (see the module docstring)."""

    input_type = InputType.POINTWISE

    HARNESS = Capabilities(training="statistics")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.window, self.decay = int(config["window"]), float(config["decay"])
        self.backoff = float(config["backoff"])
        if self.window < 1:
            raise ConfigError(f"cooc: window must be >= 1, got {self.window}")
        if not 0.0 < self.decay <= 1.0:
            raise ConfigError(f"cooc: decay must be in (0, 1], got {self.decay}")
        if self.backoff < 0.0:
            raise ConfigError(f"cooc: backoff must be >= 0, got {self.backoff}")
        # RecBole's Trainer builds an optimiser, which needs at least one parameter.
        self.fake_loss = torch.nn.Parameter(torch.zeros(1))
        self.transitions = None  # scipy CSR (n_items, n_items): row a holds P(. | a)
        self.popularity = np.zeros(self.n_items)

    def fit_statistics(self, train_sequences) -> None:
        """Count the transitions and the item frequencies of the training sequences."""
        import scipy.sparse as sp

        seqs = [np.asarray(s, dtype=np.int64) for s in train_sequences if len(s)]
        src = np.concatenate([s[:-1] for s in seqs]) if seqs else np.zeros(0, np.int64)
        dst = np.concatenate([s[1:] for s in seqs]) if seqs else np.zeros(0, np.int64)
        counts = sp.csr_matrix((np.ones(len(src)), (src, dst)), shape=(self.n_items,) * 2)
        out = np.asarray(counts.sum(axis=1)).ravel()
        # row-normalise: each source item's transitions sum to 1 (rows without any stay empty)
        self.transitions = sp.diags(np.divide(1.0, out, out=np.zeros_like(out),
                                              where=out > 0)) @ counts
        freq = np.bincount(np.concatenate(seqs), minlength=self.n_items).astype(np.float64) \
            if seqs else np.zeros(self.n_items)
        self.popularity = freq / max(freq.sum(), 1.0)

    def calculate_loss(self, interaction):
        """Under RecBole's own Trainer: nothing to learn by gradient, a zero loss."""
        return self.fake_loss.sum() * 0.0

    def full_sort_predict(self, interaction) -> torch.Tensor:
        import scipy.sparse as sp

        if self.transitions is None:
            raise RuntimeError("cooc: fit_statistics(train_sequences) must run before scoring")
        seq = interaction[self.ITEM_SEQ].cpu().numpy()
        lens = interaction[self.ITEM_SEQ_LEN].cpu().numpy()
        rows, cols, weights = [], [], []
        for k in range(self.window):  # k = 0: the most recent input item
            idx = np.flatnonzero(lens > k)
            rows.append(idx)
            cols.append(seq[idx, lens[idx] - 1 - k])
            weights.append(np.full(len(idx), self.decay ** k))
        query = sp.csr_matrix((np.concatenate(weights), (np.concatenate(rows),
                                                         np.concatenate(cols))),
                              shape=(len(seq), self.n_items))
        scores = (query @ self.transitions).toarray() + self.backoff * self.popularity
        return torch.from_numpy(scores.astype(np.float32)).to(interaction[self.ITEM_SEQ].device)

    def predict(self, interaction) -> torch.Tensor:
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)
