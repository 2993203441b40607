"""Ranking evaluation: full ranking by default, a seeded sampled mode for compatibility.

One metric implementation, from the rank of the single target (0 = top):
``HR@K = [r < K]``, ``NDCG@K = [r < K] / log2(r + 2)``, ``MRR@K = [r < K] / (r + 1)``.
The user's history (items before the target) is excluded from the ranking; the target itself
never is. Ties are broken by item id (lower id first), deterministically for every model.
Per-case ranks are kept, so any metric and any paired comparison can be recomputed later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError
from .split import Cases, Split

KS = (5, 10, 20)
METRICS = ("hr", "ndcg", "mrr")
MODES = ("full", "sampled")

# scores(users, item_seq, item_seq_len) -> (batch, n_items) float tensor; column 0 is padding.
ScoreFn = Callable[..., "torch.Tensor"]  # noqa: F821


class NonFiniteScores(RuntimeError):
    """A model returned NaN/inf scores: counting them would silently turn into hits or misses."""


def case_metrics(ranks: np.ndarray, ks=KS) -> dict[str, np.ndarray]:
    """Per-case metric vectors from 0-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
        out[f"mrr@{k}"] = np.where(hit, 1.0 / (ranks + 1.0), 0.0)
    return out


def mean_metrics(ranks: np.ndarray, ks=KS) -> dict[str, float]:
    if len(ranks) == 0:
        return {}
    return {name: float(v.mean()) for name, v in case_metrics(ranks, ks).items()}


@dataclass
class EvalResult:
    split: str  # "valid" or "test"
    users: np.ndarray
    ranks: np.ndarray
    metrics: dict[str, float]
    groups: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> metrics
    group_sizes: dict[str, int] = field(default_factory=dict)


class Evaluator:
    """Evaluates any scoring function on the validation or test cases of a split."""

    def __init__(self, split: Split, n_items: int, max_len: int, mode: str = "full",
                 n_negatives: int = 100, candidate_seed: int = 0, ks=KS, batch_size: int = 512,
                 case_labels: dict[str, np.ndarray] | None = None, exclude_history: bool = True):
        if mode not in MODES:
            raise ConfigError(f"unknown evaluation mode {mode!r} (choose from {', '.join(MODES)})")
        if mode == "sampled" and n_negatives < 1:
            raise ConfigError("sampled evaluation needs n_negatives >= 1")
        self.split, self.n_items, self.max_len = split, n_items, max_len
        self.mode, self.n_negatives, self.ks, self.batch_size = mode, n_negatives, tuple(ks), batch_size
        self.candidate_seed = candidate_seed
        self.case_labels = case_labels or {}
        # RecBole's sequential evaluator ranks history items too; False reproduces it (parity).
        self.exclude_history = exclude_history
        self._candidates: dict[str, np.ndarray] = {}
        self._train_counts = split.train_item_counts(n_items)

    def cases(self, which: str) -> Cases:
        if which not in ("valid", "test"):
            raise ValueError(which)
        return getattr(self.split, which)

    def inputs(self, cases: Cases, start: int, end: int):
        """Right-padded input sequences (the last ``max_len`` history items) and their lengths."""
        import torch

        n = end - start
        seq = np.zeros((n, self.max_len), dtype=np.int64)
        lens = np.zeros(n, dtype=np.int64)
        for j, (u, p) in enumerate(zip(cases.user[start:end], cases.pos[start:end])):
            hist = self.split.sequences[u][max(0, p - self.max_len):p]
            seq[j, :len(hist)] = hist
            lens[j] = len(hist)
        return (torch.from_numpy(cases.user[start:end].copy()), torch.from_numpy(seq),
                torch.from_numpy(lens))

    def history(self, cases: Cases, start: int, end: int):
        """The whole history of each case (not only the model's last ``max_len`` inputs), right
        padded: these items are excluded from the ranking (none if ``exclude_history`` is off)."""
        import torch

        users, pos = cases.user[start:end], cases.pos[start:end]
        width = int(pos.max()) if self.exclude_history and len(pos) else 0
        hist = np.zeros((len(users), max(width, 1)), dtype=np.int64)
        lens = np.zeros(len(users), dtype=np.int64)
        if width:
            for j, (u, p) in enumerate(zip(users, pos)):
                hist[j, :p] = self.split.sequences[u][:p]
                lens[j] = p
        return torch.from_numpy(hist), torch.from_numpy(lens)

    def sampled_candidates(self, which: str) -> np.ndarray:
        """(cases, N) negatives per case, fixed by ``candidate_seed`` and shared by all models."""
        if which in self._candidates:
            return self._candidates[which]
        cases = self.cases(which)
        rng = np.random.default_rng([self.candidate_seed, 0 if which == "valid" else 1])
        n_real = self.n_items - 1
        out = np.zeros((len(cases), self.n_negatives), dtype=np.int64)
        for j, (u, p) in enumerate(zip(cases.user, cases.pos)):
            seq = self.split.sequences[u]
            banned = set(seq[:p].tolist()) | {int(seq[p])}
            if n_real - len(banned) < self.n_negatives:
                raise ConfigError(f"sampled evaluation: only {n_real - len(banned)} items available "
                                  f"as negatives, {self.n_negatives} requested")
            chosen: list[int] = []
            taken = set(banned)
            while len(chosen) < self.n_negatives:
                for i in rng.integers(1, self.n_items, size=2 * self.n_negatives).tolist():
                    if i not in taken:
                        taken.add(i)
                        chosen.append(i)
                        if len(chosen) == self.n_negatives:
                            break
            out[j] = chosen
        self._candidates[which] = out
        return out

    def evaluate(self, score_fn: ScoreFn, which: str = "valid", progress: bool = False) -> EvalResult:
        import torch

        cases = self.cases(which)
        ranks = np.zeros(len(cases), dtype=np.int64)
        cand = self.sampled_candidates(which) if self.mode == "sampled" else None
        from tqdm.auto import tqdm

        starts = range(0, len(cases), self.batch_size)
        for start in tqdm(starts, desc=f"eval {which}", disable=not progress, leave=False):
            end = min(start + self.batch_size, len(cases))
            users, seq, lens = self.inputs(cases, start, end)
            with torch.no_grad():
                scores = score_fn(users, seq, lens).detach().float().cpu()
            if scores.shape != (end - start, self.n_items):
                raise RuntimeError(f"scores have shape {tuple(scores.shape)}, expected "
                                   f"{(end - start, self.n_items)}")
            if not torch.isfinite(scores[:, 1:]).all():
                raise NonFiniteScores(f"{int((~torch.isfinite(scores[:, 1:])).sum())} "
                                      f"non-finite scores in {which} batch at case {start}")
            targets = torch.from_numpy(np.array(
                [self.split.sequences[u][p] for u, p in zip(cases.user[start:end],
                                                            cases.pos[start:end])]))
            if cand is not None:
                ranks[start:end] = rank_among(scores, targets, torch.from_numpy(cand[start:end]))
            else:
                hist, hist_lens = self.history(cases, start, end)
                ranks[start:end] = rank_full(scores, targets, hist, hist_lens)
        res = EvalResult(which, cases.user.copy(), ranks, mean_metrics(ranks, self.ks))
        self._add_groups(res, cases)
        return res

    def _add_groups(self, res: EvalResult, cases: Cases) -> None:
        """Metrics per label of the target (e.g. the synthetic signal) and warm vs cold targets."""
        targets = np.array([self.split.sequences[u][p] for u, p in zip(cases.user, cases.pos)])
        labels = {"target": np.where(self._train_counts[targets] == 0, "cold", "warm")}
        for name, values in self.case_labels.items():
            labels[name] = np.asarray(values, dtype=object)[cases.row]
        for name, vals in labels.items():
            for v in sorted(set(vals.tolist())):
                mask = vals == v
                res.groups[f"{name}={v}"] = mean_metrics(res.ranks[mask], self.ks)
                res.group_sizes[f"{name}={v}"] = int(mask.sum())
        if "signal" in labels:  # signal x warm/cold: the cells the controlled dataset is built for
            for s in sorted(set(labels["signal"].tolist())):
                for t in ("warm", "cold"):
                    mask = (labels["signal"] == s) & (labels["target"] == t)
                    if mask.any():
                        res.groups[f"signal={s},target={t}"] = mean_metrics(res.ranks[mask], self.ks)
                        res.group_sizes[f"signal={s},target={t}"] = int(mask.sum())


def rank_full(scores, targets, seq, lens) -> np.ndarray:
    """0-based rank of each target among all items, history and padding excluded."""
    import torch

    scores = scores.clone()
    scores[:, 0] = -torch.inf
    rows = torch.arange(len(targets)).unsqueeze(1).expand_as(seq)
    valid = torch.arange(seq.shape[1]).unsqueeze(0) < lens.unsqueeze(1)
    hist_rows, hist_items = rows[valid], seq[valid]
    keep = hist_items != targets[hist_rows]  # the target is never excluded, even if seen before
    scores[hist_rows[keep], hist_items[keep]] = -torch.inf
    target_score = scores.gather(1, targets.unsqueeze(1))
    ids = torch.arange(scores.shape[1]).unsqueeze(0)
    better = (scores > target_score) | ((scores == target_score) & (ids < targets.unsqueeze(1)))
    return better.sum(1).numpy()


def rank_among(scores, targets, candidates) -> np.ndarray:
    """0-based rank of each target among its sampled negative candidates."""

    target_score = scores.gather(1, targets.unsqueeze(1))
    neg = scores.gather(1, candidates)
    better = (neg > target_score) | ((neg == target_score) & (candidates < targets.unsqueeze(1)))
    return better.sum(1).numpy()
