"""Ranking evaluation: full ranking by default, a seeded sampled mode for compatibility.

One metric implementation, from the rank of the single target (0 = top):
``HR@K = [r < K]``, ``NDCG@K = [r < K] / log2(r + 2)``, ``MRR@K = [r < K] / (r + 1)``.
The user's history (items before the target) is excluded from the ranking; the target itself
never is.

**Ties carry no information** (docs/protocol.md, 10). For each case the evaluator keeps ``b``,
the number of candidates scored strictly above the target (its optimistic 0-based rank), and
``t``, the number of other candidates scored exactly like it. A metric is its expectation under a
uniformly random order of the tied block: the mean of the metric over ranks ``b .. b + t``
(exact, O(1) per case from a prefix sum over the positions below K). A constant scorer therefore
scores exactly the random expectation, whatever the item numbering; without ties the metrics are
the plain ones.

**Cold targets: a labelled cold-start protocol.** Overall metrics and every warm or label group
use the full ranking. For a case whose target has no training interaction (a cold target), the
evaluator also ranks it among the never-trained items only (the other cold items and the
target, history excluded as usual; in sampled mode, the cold items of its candidate set), and the
``target=cold`` group and every ``signal=X,target=cold`` cell are computed from those cold-start
ranks (``EvalResult.group_protocols`` names them). Under full ranking a prior "never-trained items
first" would win the cold cells without reading any content; under the cold-start protocol it is
exactly at chance there, and only a model that reads the content of cold items can beat chance.

Per-case ranks and ties are kept (``EvalResult.arrays``), so any metric and any paired comparison
can be recomputed later.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError
from .memory import retain_freed_memory
from .split import Cases, Split

KS = (5, 10, 20)
METRICS = ("hr", "ndcg", "mrr")
MODES = ("full", "sampled")

# scores(users, item_seq, item_seq_len) -> (batch, n_items) float tensor; column 0 is padding.
ScoreFn = Callable[..., "torch.Tensor"]  # noqa: F821


class NonFiniteScores(RuntimeError):
    """A model returned NaN/inf scores: counting them would silently turn into hits or misses."""


def case_metrics(ranks: np.ndarray, ks=KS, ties: np.ndarray | None = None
                 ) -> dict[str, np.ndarray]:
    """Per-case metric vectors from 0-based ranks (candidates strictly better than the target)
    and ``ties`` (other candidates scored like it; None = none): the expected metric when the
    tied block is in uniformly random order, i.e. the mean over ranks ``r .. r + ties``."""
    ranks = np.asarray(ranks, dtype=np.int64)
    ties = np.zeros_like(ranks) if ties is None else np.asarray(ties, dtype=np.int64)
    if ranks.shape != ties.shape:
        raise ValueError(f"ranks {ranks.shape} and ties {ties.shape} differ in shape")
    tied = ties > 0
    out = {}
    for k in ks:
        pos = np.arange(k, dtype=np.float64)
        for name, weight in (("hr", np.ones(k)), ("ndcg", 1.0 / np.log2(pos + 2.0)),
                             ("mrr", 1.0 / (pos + 1.0))):
            # no tie: the weight itself (bit-identical to the plain metric)
            value = np.where(ranks < k, weight[np.minimum(ranks, k - 1)], 0.0)
            if tied.any():
                prefix = np.concatenate([[0.0], np.cumsum(weight)])  # prefix[n] = sum_{r<n} w
                lo, hi = np.minimum(ranks, k), np.minimum(ranks + ties + 1, k)
                value = np.where(tied, (prefix[hi] - prefix[lo]) / (ties + 1.0), value)
            out[f"{name}@{k}"] = value
    return out


def mean_metrics(ranks: np.ndarray, ks=KS, ties: np.ndarray | None = None) -> dict[str, float]:
    """Mean of :func:`case_metrics` over the cases ({} when there is none)."""
    if len(ranks) == 0:
        return {}
    return {name: float(v.mean()) for name, v in case_metrics(ranks, ks, ties).items()}


COLD_PROTOCOL = "cold-start: ranked among never-trained items"


@dataclass
class EvalResult:
    """One evaluation: per-case users, ranks and ties (full ranking, or the sampled candidates),
    the cold-start ranks and ties of cold-target cases (-1 for warm ones), the mean metrics and
    the metrics per group, each group's size and, for groups not on the full ranking, the
    protocol they were computed under."""

    split: str  # "valid" or "test"
    users: np.ndarray
    ranks: np.ndarray
    metrics: dict[str, float]
    groups: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> metrics
    group_sizes: dict[str, int] = field(default_factory=dict)
    ties: np.ndarray | None = None  # None: no ties (zeros)
    cold_ranks: np.ndarray | None = None  # -1 where the target is warm
    cold_ties: np.ndarray | None = None
    group_protocols: dict[str, str] = field(default_factory=dict)  # group -> protocol

    def __post_init__(self):
        n = len(self.ranks)
        if self.ties is None:
            self.ties = np.zeros(n, dtype=np.int64)
        if self.cold_ranks is None:
            self.cold_ranks = np.full(n, -1, dtype=np.int64)
        if self.cold_ties is None:
            self.cold_ties = np.full(n, -1, dtype=np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-case arrays as stored in ``per_case.npz``: ``<split>_users``, ``_ranks``,
        ``_ties``, ``_cold_ranks``, ``_cold_ties``."""
        return {f"{self.split}_{name}": getattr(self, name)
                for name in ("users", "ranks", "ties", "cold_ranks", "cold_ties")}


def stored_cases(npz, which: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users, ranks and ties of ``which`` from a loaded per-case file; ties are zeros in files
    written before ties were stored (those ranks broke ties by item id)."""
    ranks = npz[f"{which}_ranks"]
    key = f"{which}_ties"
    ties = npz[key] if key in npz else np.zeros_like(ranks)
    return npz[f"{which}_users"], ranks, ties


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
        retain_freed_memory()  # every batch allocates (cases, n_items) scores (benchmark.memory)

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
        """Rank every case of ``which`` under ``score_fn`` (see the module docstring)."""
        import torch

        cases = self.cases(which)
        n = len(cases)
        ranks, ties = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        cold_ranks, cold_ties = np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
        cand = self.sampled_candidates(which) if self.mode == "sampled" else None
        never_trained = torch.from_numpy(self._train_counts == 0)
        never_trained[0] = False  # padding is never a candidate
        from tqdm.auto import tqdm

        starts = range(0, n, self.batch_size)
        for start in tqdm(starts, desc=f"eval {which}", disable=not progress, leave=False):
            end = min(start + self.batch_size, n)
            users, seq, lens = self.inputs(cases, start, end)
            with torch.no_grad():
                scores = score_fn(users, seq, lens).detach().float().cpu()
            if scores.shape != (end - start, self.n_items):
                raise RuntimeError(f"scores have shape {tuple(scores.shape)}, expected "
                                   f"{(end - start, self.n_items)}")
            # a float64 sum of float32 values cannot overflow: finite iff every score is
            # (a third of the cost of isfinite(...).all() and no (cases, n_items) mask)
            if not torch.isfinite(scores[:, 1:].sum(dtype=torch.float64)):
                raise NonFiniteScores(f"{int((~torch.isfinite(scores[:, 1:])).sum())} "
                                      f"non-finite scores in {which} batch at case {start}")
            targets = torch.from_numpy(np.array(
                [self.split.sequences[u][p] for u, p in zip(cases.user[start:end],
                                                            cases.pos[start:end])]))
            cold = never_trained[targets]
            if cand is not None:
                c = torch.from_numpy(cand[start:end])
                ranks[start:end], ties[start:end] = rank_among(scores, targets, c)
                if cold.any():
                    rows = np.flatnonzero(cold.numpy()) + start
                    cold_ranks[rows], cold_ties[rows] = rank_among(
                        scores[cold], targets[cold], c[cold], among=never_trained)
            else:
                hist, hist_lens = self.history(cases, start, end)
                ranks[start:end], ties[start:end] = rank_full(scores, targets, hist, hist_lens)
                if cold.any():
                    rows = np.flatnonzero(cold.numpy()) + start
                    cold_ranks[rows], cold_ties[rows] = rank_full(
                        scores[cold], targets[cold], hist[cold], hist_lens[cold],
                        among=never_trained)
        res = EvalResult(which, cases.user.copy(), ranks, mean_metrics(ranks, self.ks, ties),
                         ties=ties, cold_ranks=cold_ranks, cold_ties=cold_ties)
        self._add_groups(res, cases)
        return res

    def _add_groups(self, res: EvalResult, cases: Cases) -> None:
        """Metrics per label of the target (e.g. the synthetic signal) and warm vs cold targets;
        groups of cold targets use the cold-start ranks (``res.group_protocols``)."""
        for group, mask in case_groups(self.split, self._train_counts, self.case_labels,
                                       cases).items():
            if group.endswith("target=cold"):
                ranks, ties = res.cold_ranks[mask], res.cold_ties[mask]
                res.group_protocols[group] = COLD_PROTOCOL + (
                    " of the sampled candidates" if self.mode == "sampled" else "")
            else:
                ranks, ties = res.ranks[mask], res.ties[mask]
            res.groups[group] = mean_metrics(ranks, self.ks, ties)
            res.group_sizes[group] = int(mask.sum())


def case_groups(split: Split, train_counts: np.ndarray, case_labels: dict[str, np.ndarray],
                cases: Cases) -> dict[str, np.ndarray]:
    """group -> boolean mask over ``cases``: ``target=warm|cold``, ``<label>=<value>`` per case
    label, and ``signal=X,target=warm|cold`` when there is a ``signal`` label. A group ending in
    ``target=cold`` is scored on the cold-start ranks (:data:`COLD_PROTOCOL`). ``train_counts``:
    training interactions per item (:meth:`Split.train_item_counts`). Shared by the evaluator
    and by anything that re-reads stored per-case ranks (the modality verdicts)."""
    targets = np.array([split.sequences[u][p] for u, p in zip(cases.user, cases.pos)],
                       dtype=np.int64)
    labels = {"target": np.where(train_counts[targets] == 0, "cold", "warm")}
    for name, values in case_labels.items():
        labels[name] = np.asarray(values, dtype=object)[cases.row]
    out: dict[str, np.ndarray] = {}
    for name, vals in labels.items():
        for v in sorted(set(vals.tolist())):
            out[f"{name}={v}"] = vals == v
    if "signal" in labels:  # signal x warm/cold: the cells the controlled dataset is built for
        for s in sorted(set(labels["signal"].tolist())):
            for t in ("warm", "cold"):
                mask = (labels["signal"] == s) & (labels["target"] == t)
                if mask.any():
                    out[f"signal={s},target={t}"] = mask
    return out


def rank_full(scores, targets, seq, lens, among=None) -> tuple[np.ndarray, np.ndarray]:
    """(ranks, ties) of each target among all items, history and padding excluded: the number
    of items scored strictly above it (its 0-based optimistic rank) and the number of other
    items scored exactly like it. ``among`` (a boolean mask over items) restricts the
    candidates to those items; the target itself is never excluded."""
    import torch

    n = len(targets)
    target_score = scores.gather(1, targets.unsqueeze(1))  # finite: the evaluator checks
    pool = scores.clone()
    pool[:, 0] = -torch.inf
    if among is not None:
        pool[:, ~among] = -torch.inf
    rows = torch.arange(n).unsqueeze(1).expand_as(seq)
    valid = torch.arange(seq.shape[1]).unsqueeze(0) < lens.unsqueeze(1)
    pool[rows[valid], seq[valid]] = -torch.inf  # the history (a repeated target comes back below)
    pool[torch.arange(n), targets] = -torch.inf  # the target is not its own competitor
    return _counts(pool > target_score, pool == target_score)


def rank_among(scores, targets, candidates, among=None) -> tuple[np.ndarray, np.ndarray]:
    """(ranks, ties) of each target among its sampled negative candidates (``among``: only the
    candidates in that boolean item mask count)."""
    target_score = scores.gather(1, targets.unsqueeze(1))
    neg = scores.gather(1, candidates)
    better, tied = neg > target_score, neg == target_score
    if among is not None:
        keep = among[candidates]
        better, tied = better & keep, tied & keep
    return _counts(better, tied)


def _counts(better, tied) -> tuple[np.ndarray, np.ndarray]:
    import torch

    """Per row: candidates strictly better than the target, and other candidates tied with it
    (counted in int32, exact below 2**31 items: a bool sum in int64 takes 4x longer)."""
    return (better.sum(1, dtype=torch.int32).numpy().astype(np.int64),
            tied.sum(1, dtype=torch.int32).numpy().astype(np.int64))
