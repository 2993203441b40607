"""Deterministic, hashed train/validation/test splits of user sequences.

A split is stored as positions in each user's time-ordered sequence, so that every model sees the
same training prefix and the same evaluation cases:

- ``train_len[u]``: the first ``train_len[u]`` items of user u's sequence are training data;
- an evaluation case ``(user, pos)``: predict ``seq[user][pos]`` from ``seq[user][:pos]``; the items
  of ``seq[user][:pos]`` are the user's history, excluded from the ranking.

Leave-one-out matches RecBole's sequential ``LS: valid_and_test`` exactly: every case needs a
non-empty history and every user keeps at least one training pair, so a user with n interactions
holds out ``min(2, n - 2)`` of them (test first, then validation).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .data.dataset import Dataset
from .errors import ConfigError

SPLITS = ("loo", "temporal")


@dataclass
class Cases:
    """Evaluation cases: for each case, a user, the position of its target, and the target row."""

    user: np.ndarray  # int64, internal user id
    pos: np.ndarray  # int64, position of the target in the user's sequence
    row: np.ndarray  # int64, row of the target interaction in the .inter file (for its labels)

    def __len__(self) -> int:
        return len(self.user)


@dataclass
class Split:
    kind: str
    sequences: list[np.ndarray]  # per user id (index 0 = padding, empty): items in time order
    rows: list[np.ndarray]  # per user id: .inter row of each sequence position
    times: list[np.ndarray]  # per user id: timestamp of each sequence position
    train_len: np.ndarray  # per user id
    valid: Cases
    test: Cases
    checksum: str
    cutoffs: tuple[float, float] | None = None  # temporal split: (validation, test) start times

    def train_sequences(self) -> list[np.ndarray]:
        return [s[:n] for s, n in zip(self.sequences, self.train_len)]

    def train_item_counts(self, n_items: int) -> np.ndarray:
        counts = np.zeros(n_items, dtype=np.int64)
        for s, n in zip(self.sequences, self.train_len):
            np.add.at(counts, s[:n], 1)
        return counts

    def summary(self) -> dict:
        return {"kind": self.kind, "checksum": self.checksum, "cutoffs": self.cutoffs,
                "train_interactions": int(self.train_len.sum()),
                "valid_cases": len(self.valid), "test_cases": len(self.test)}


def user_sequences(data: Dataset) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each user's items sorted by time; ties keep file order (a stable sort, as RecBole's)."""
    order = np.lexsort((np.arange(data.n_interactions), data.timestamp, data.user))
    users = data.user[order]
    bounds = np.searchsorted(users, np.arange(data.n_users + 1))
    seqs = [data.item[order[bounds[u]:bounds[u + 1]]] for u in range(data.n_users)]
    rows = [order[bounds[u]:bounds[u + 1]] for u in range(data.n_users)]
    return seqs, rows


def _cases(user: list[int], pos: list[int], rows: list[np.ndarray]) -> Cases:
    u = np.asarray(user, dtype=np.int64)
    p = np.asarray(pos, dtype=np.int64)
    r = np.asarray([rows[a][b] for a, b in zip(u, p)], dtype=np.int64)
    return Cases(u, p, r)


def make_split(data: Dataset, kind: str = "loo", valid_frac: float = 0.1,
               test_frac: float = 0.1) -> Split:
    """Build a split. ``loo``: last item test, second-to-last validation (per user).
    ``temporal``: two global time cut-offs at the (1 - valid - test) and (1 - test) quantiles;
    each user's first interaction after a cut-off is its validation / test case."""
    if kind not in SPLITS:
        raise ConfigError(f"unknown split {kind!r} (choose from {', '.join(SPLITS)})")
    seqs, rows = user_sequences(data)
    n = np.array([len(s) for s in seqs], dtype=np.int64)
    vu, vp, tu, tp = [], [], [], []
    cutoffs = None
    if kind == "loo":
        train_len = n.copy()
        for u in range(1, data.n_users):
            held = max(0, min(2, n[u] - 2))
            train_len[u] = n[u] - held
            if held >= 1:
                tu.append(u), tp.append(n[u] - 1)
            if held == 2:
                vu.append(u), vp.append(n[u] - 2)
    else:
        if not (0 < valid_frac < 1 and 0 < test_frac < 1 and valid_frac + test_frac < 1):
            raise ConfigError("temporal split needs 0 < valid_frac, test_frac and their sum < 1")
        t_valid, t_test = np.quantile(data.timestamp, [1 - valid_frac - test_frac, 1 - test_frac])
        cutoffs = (float(t_valid), float(t_test))
        train_len = np.zeros_like(n)
        for u in range(1, data.n_users):
            times = data.timestamp[rows[u]]  # sorted: rows are in time order
            train_len[u] = int(np.searchsorted(times, t_valid, side="left"))
            first_valid, first_test = train_len[u], int(np.searchsorted(times, t_test, "left"))
            if first_valid < first_test and first_valid > 0:
                vu.append(u), vp.append(first_valid)
            if first_test < n[u] and first_test > 0:
                tu.append(u), tp.append(first_test)
    valid, test = _cases(vu, vp, rows), _cases(tu, tp, rows)
    h = hashlib.sha256(kind.encode())
    for arr in (train_len, valid.user, valid.pos, test.user, test.pos):
        h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    for s in seqs:
        h.update(np.ascontiguousarray(s, dtype=np.int64).tobytes())
    times = [data.timestamp[r] for r in rows]
    return Split(kind, seqs, rows, times, train_len, valid, test, h.hexdigest()[:16], cutoffs)
