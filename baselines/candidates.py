"""Training candidates: the items a full-softmax training loss ranks each target against.

``train_candidates`` (a registry parameter of every model with a full-softmax training loss):

- ``all``: every item (RecBole's SASRec and the official UniSRec/MMSRec code). An item that never
  occurs in training is then a negative at every step and nothing else, so a content model learns
  to push exactly the cold items down, although their content would let it rank them;
- ``seen``: only the items the training loss ever sees, the inputs and targets of the training
  split's (history, next item) pairs; every other logit (cold items, items held out only as a
  validation/test target, the padding column) is ``-inf`` in the TRAINING loss. Scores at
  evaluation (``full_sort_predict``, ``predict``) are never masked.

The harness :class:`~benchmark.training.Trainer` hands the model its training split
(:meth:`TrainCandidates.set_train_split`), so the mask comes from the training part of the split
only. A model trained some other way (RecBole's own pipeline) has no split: with ``seen`` it logs
one warning and trains over all items, unless the caller sets the items itself
(:meth:`TrainCandidates.set_train_items`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from benchmark.errors import ConfigError

log = logging.getLogger(__name__)

TRAIN_CANDIDATES = ("seen", "all")


def train_item_ids(split) -> np.ndarray:
    """Sorted ids of the items in the training pairs of ``split``: the first ``train_len[u]``
    items of every user with at least one (history, next item) pair (``train_len >= 2``). An
    item held out only as a validation/test target is not among them, whatever it is later used
    as (a test case's history, say); nor is the padding id 0."""
    parts = [s[:n] for s, n in zip(split.sequences, split.train_len) if n >= 2]
    if not parts:
        return np.zeros(0, dtype=np.int64)
    ids = np.unique(np.concatenate(parts).astype(np.int64))
    return ids[ids > 0]


def train_item_mask(split, n_items: int) -> torch.Tensor:
    """(n_items,) bool: True for the items of :func:`train_item_ids`."""
    mask = torch.zeros(n_items, dtype=torch.bool)
    mask[torch.from_numpy(train_item_ids(split))] = True
    return mask


class TrainCandidates:
    """Mixin for a RecBole model whose training loss is a softmax over the item table.

    Call :meth:`init_train_candidates` in ``__init__`` (after ``nn.Module.__init__``) and pass
    every full-table training logit matrix (N, n_items) through :meth:`candidate_logits`.
    """

    train_candidates: str = "all"

    def init_train_candidates(self, config) -> None:
        value = config["train_candidates"]  # None: a config from outside the registry
        value = "all" if value is None else value
        if value not in TRAIN_CANDIDATES:
            raise ConfigError(f"{type(self).__name__}: train_candidates must be one of "
                              f"{', '.join(TRAIN_CANDIDATES)}, got {value!r}")
        self.train_candidates = value
        # (n_items,) bool, or None while unknown; rebuilt from the split, not checkpointed
        self.register_buffer("train_item_mask", None, persistent=False)
        self.register_buffer("train_item_excluded", None, persistent=False)  # ids of ~mask
        self._warned_no_split = False

    def set_train_split(self, split) -> None:
        """The model trains on ``split`` (called by the harness Trainer): with ``seen``, the
        training softmax is restricted to the items of its training pairs."""
        if self.train_candidates == "seen":
            self.set_train_items(train_item_ids(split))

    def set_train_items(self, items) -> None:
        """Restrict the training softmax (under ``seen``) to ``items`` (ids, any iterable)."""
        ids = torch.as_tensor(np.asarray(list(items), dtype=np.int64).reshape(-1))
        if len(ids) and (ids.min() < 1 or ids.max() >= self.n_items):
            raise ConfigError(f"training items must be ids in 1..{self.n_items - 1}")
        mask = torch.zeros(self.n_items, dtype=torch.bool)
        mask[ids] = True
        device = self._candidates_device()
        self.train_item_mask = mask.to(device)
        self.train_item_excluded = (~mask).nonzero().squeeze(1).to(device)

    def candidate_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Training logits (N, n_items) with the non-candidate items at -inf (``seen``); the
        same tensor, untouched, under ``all``."""
        if self.train_candidates == "all":
            return logits
        mask = self.train_item_mask
        if mask is None:
            if not self._warned_no_split:
                log.warning("%s: train_candidates='seen' but the model was not given its "
                            "training split (set_train_split); training over all items",
                            type(self).__name__)
                self._warned_no_split = True
            return logits
        # the same values as masked_fill(~mask, -inf), forward and backward, at half the cost:
        # only the few excluded columns are written, no (N, n_items) mask is broadcast
        return logits.index_fill(1, self.train_item_excluded.to(logits.device), float("-inf"))

    def _candidates_device(self) -> torch.device:
        for t in (*self.parameters(), *self.buffers()):
            return t.device
        return torch.device("cpu")
