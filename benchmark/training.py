"""The training loop for sequential recommenders, with early stopping, checkpoints and resume.

Two ways to turn the training split into batches (``train_mode``):

- ``prefix``: RecBole's data augmentation, one sample per (prefix, next item), in RecBole's sample
  order and shuffled by the same seeded ``DataLoader``, so that a RecBole model trained here follows
  RecBole's own pipeline step for step (the parity test checks it);
- ``all_positions``: each user's training sequence, cut into windows of ``MAX_ITEM_LIST_LENGTH + 1``,
  once per epoch with a loss at every position (the original SASRec training).

A model that declares ``train_split`` (:mod:`benchmark.contract`) is told the split it trains on
before the first step (the content models' ``train_candidates: seen`` restricts their training
softmax to its items, :mod:`baselines.candidates`).

Early stopping follows RecBole's rule: stop once validation NDCG@10 has not improved (strictly)
for more than ``patience`` epochs; the best epoch's weights are restored at the end.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .contract import capabilities
from .errors import ConfigError
from .evaluation import EvalResult, Evaluator
from .lifecycle import scorer
from .memory import retain_freed_memory
from .split import Split

log = logging.getLogger(__name__)
VALID_METRIC = "ndcg@10"


def seed_everything(seed: int) -> None:
    """The same seeding as RecBole's ``init_seed`` (CPU determinism)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prefix_samples(split: Split) -> np.ndarray:
    """(user, target position) pairs of the training split, in RecBole's training-set order.

    RecBole augments every sequence, sorts the samples stably by target time, splits them per user
    (users in order of their earliest sample) and keeps each user's samples in time order.
    """
    users, firsts, pairs = [], [], []
    for u, (seq_rows, n_train) in enumerate(zip(split.rows, split.train_len)):
        if n_train < 2:
            continue
        users.append(u)
        firsts.append(seq_rows[1])  # row of the earliest sample's target
        pairs.append(np.stack([np.full(n_train - 1, u), np.arange(1, n_train)], axis=1))
    if not pairs:
        raise ConfigError("the training split has no (history, next item) pair to learn from")
    return np.concatenate([pairs[i] for i in _recbole_user_order(split, users)])


def _recbole_user_order(split: Split, users: list[int]) -> list[int]:
    """Index order of ``users`` by the time of their first sample's target, ties by user id."""
    keys = [(float(split.times[u][1]), u) for u in users]
    return sorted(range(len(users)), key=lambda i: keys[i])


def position_windows(split: Split, max_len: int) -> np.ndarray:
    """(user, start, end) windows covering each training sequence once; each window predicts
    ``seq[start+1:end]`` from ``seq[start:end-1]``, at most ``max_len`` targets."""
    out = []
    for u, n in enumerate(split.train_len):
        end = int(n)
        while end >= 2:
            start = max(0, end - max_len - 1)
            out.append((u, start, end))
            end = start + 1 if start > 0 else 0
    if not out:
        raise ConfigError("the training split has no (history, next item) pair to learn from")
    return np.asarray(out, dtype=np.int64)


@dataclass
class TrainOutcome:
    best_epoch: int
    best_valid: dict[str, float]
    epochs_run: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    resumed_from: int | None = None
    pretrain_losses: list[float] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)  # per-step diagnostics (VLM2Rec's loop)


@contextlib.contextmanager
def preserved_rng():
    """Run a block without disturbing the caller's random streams (python, numpy, torch)."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class EpochLoop:
    """The one epoch loop of the harness: train an epoch, validate, keep the best weights, stop
    early (RecBole's rule: once validation NDCG@10 has not improved, strictly, for more than
    ``patience`` epochs), write a resumable checkpoint after every epoch, restore the best
    weights at the end.

    A subclass says how an epoch is trained and what its weights, optimizer and random state
    are: :class:`Trainer` (every sequential model) and VLM2Rec's contrastive SFT loop
    (``methods.vlm2rec.train.ContrastiveTrainer``), which differ in batches, optimizer and
    schedule, gradient accumulation and DDP, not in this loop.
    """

    desc = "epochs"
    model: torch.nn.Module
    params: dict
    evaluator: Evaluator
    checkpoint: Path | None
    progress: bool
    on_epoch: Callable[[int, dict], None] | None
    is_main = True  # the process that validates, logs and writes (rank 0)

    # -- what a subclass provides -----------------------------------------------------------
    def weights(self) -> dict:
        """A copy of the weights that training changes."""
        return copy.deepcopy(self.model.state_dict())

    def load_weights(self, weights: dict) -> None:
        self.model.load_state_dict(weights)

    def before_training(self) -> list[float]:
        """Work before the first epoch of a fresh run (a pre-training stage's losses)."""
        return []

    def train_epoch(self, state: dict) -> dict:
        """One epoch of optimisation: ``{"train_loss": ..., **other row fields}``."""
        raise NotImplementedError

    def evaluate(self, which: str) -> EvalResult:
        self.model.eval()
        return self.evaluator.evaluate(scorer(self.model, self.device), which)

    def validate(self) -> dict[str, float]:
        """Validation metrics (early stopping reads NDCG@10)."""
        return self.evaluate("valid").metrics

    def checkpoint_extra(self) -> dict:
        """Besides weights, optimizer and loop state: what exact resumption needs."""
        return {}

    def restore_extra(self, blob: dict) -> None:
        pass

    def after_checkpoint(self) -> None:
        pass

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainOutcome:
        from tqdm.auto import tqdm

        retain_freed_memory()  # every step allocates the same large tensors (benchmark.memory)
        p = self.params
        state = {"epoch": 0, "step": 0, "best_score": -np.inf, "best_epoch": -1,
                 "bad_epochs": 0, "history": [], "steps": [], "seconds": 0.0, "best_valid": {}}
        best = self.weights()
        resumed_from = None
        if resume and self.checkpoint is not None and self.checkpoint.exists():
            best, state = self._load_checkpoint()
            resumed_from = state["epoch"]
            log.info("resumed from epoch %d", resumed_from)
        else:  # a resumed run's checkpoint already holds the pre-trained weights
            state["pretrain_losses"] = self.before_training()
        self.state = state
        bar = tqdm(total=p["epochs"], initial=state["epoch"], desc=self.desc,
                   disable=not self.progress or not self.is_main, leave=False)
        while state["epoch"] < p["epochs"] and state["bad_epochs"] <= p["patience"]:
            t0 = time.perf_counter()
            trained = self.train_epoch(state)
            train_seconds = time.perf_counter() - t0
            valid = self.validate()
            epoch_seconds = time.perf_counter() - t0
            score = valid.get(VALID_METRIC, 0.0)
            row = {"epoch": state["epoch"], "train_loss": trained.pop("train_loss"),
                   "train_seconds": train_seconds, "epoch_seconds": epoch_seconds, **trained,
                   **{f"valid_{k}": v for k, v in valid.items()}}
            if score > state["best_score"]:
                state.update(best_score=score, best_epoch=state["epoch"], bad_epochs=0,
                             best_valid=valid)
                best = self.weights()
            else:
                state["bad_epochs"] += 1
            state["history"].append(row)
            state["seconds"] += epoch_seconds
            state["epoch"] += 1
            self._save_checkpoint(best, state)
            if self.on_epoch and self.is_main:
                self.on_epoch(row["epoch"], row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", ndcg10=f"{score:.4f}")
        bar.close()
        self.load_weights(best)
        self.model.eval()
        return TrainOutcome(best_epoch=state["best_epoch"], best_valid=state["best_valid"],
                            epochs_run=state["epoch"], seconds=state["seconds"],
                            history=state["history"], resumed_from=resumed_from,
                            pretrain_losses=state.get("pretrain_losses", []),
                            steps=state["steps"])

    def _save_checkpoint(self, best: dict, state: dict) -> None:
        if self.checkpoint is not None and self.is_main:
            from .io import atomic_write

            blob = {"model": self.weights(), "best_model": best,
                    "optimizer": self.optimizer.state_dict(), "state": copy.deepcopy(state),
                    **self.checkpoint_extra()}
            atomic_write(self.checkpoint, lambda tmp: torch.save(blob, tmp))
        self.after_checkpoint()

    def _load_checkpoint(self) -> tuple[dict, dict]:
        blob = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
        self.load_weights(blob["model"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.restore_extra(blob)
        return blob["best_model"], blob["state"]


class Trainer(EpochLoop):
    """Trains one sequential model on one split with Adam (the model's ``calculate_loss`` on
    prefix batches, or ``all_positions_loss`` on windows)."""

    def __init__(self, model, params: dict, split: Split, evaluator: Evaluator, seed: int,
                 device: str = "cpu", checkpoint: Path | None = None, progress: bool = True,
                 on_epoch: Callable[[int, dict], None] | None = None):
        self.model, self.params, self.split, self.evaluator = model, params, split, evaluator
        self.seed, self.device, self.checkpoint = seed, torch.device(device), checkpoint
        self.progress, self.on_epoch = progress, on_epoch
        self.caps = capabilities(model)
        self.max_len = params["MAX_ITEM_LIST_LENGTH"]
        self.mode = params["train_mode"]
        if self.mode == "all_positions" and not self.caps.all_positions:
            raise ConfigError(f"{type(model).__name__} supports only train_mode=prefix")
        if self.caps.train_split:  # train_candidates: seen (baselines.candidates)
            model.set_train_split(split)
        self.samples = (prefix_samples(split) if self.mode == "prefix"
                        else position_windows(split, self.max_len))
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        # The same DataLoader RecBole builds (it draws from the generator in the same order).
        self.loader = torch.utils.data.DataLoader(
            list(range(len(self.samples))), batch_size=params["batch_size"], shuffle=True,
            generator=self.generator, collate_fn=np.asarray)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=params["learning_rate"],
                                          weight_decay=params["weight_decay"])

    # -- batches ----------------------------------------------------------------------------
    def _prefix_batch(self, idx: np.ndarray):
        from recbole.data.interaction import Interaction

        m = self.model
        seq = np.zeros((len(idx), self.max_len), dtype=np.int64)
        lens = np.zeros(len(idx), dtype=np.int64)
        target = np.zeros(len(idx), dtype=np.int64)
        for j, (u, p) in enumerate(self.samples[idx]):
            s = self.split.sequences[u]
            hist = s[max(0, p - self.max_len):p]
            seq[j, :len(hist)] = hist
            lens[j], target[j] = len(hist), s[p]
        return Interaction({m.USER_ID: torch.from_numpy(self.samples[idx, 0].copy()),
                            m.ITEM_SEQ: torch.from_numpy(seq),
                            m.ITEM_SEQ_LEN: torch.from_numpy(lens),
                            m.POS_ITEM_ID: torch.from_numpy(target)}).to(self.device)

    def _window_batch(self, idx: np.ndarray, windows: np.ndarray | None = None):
        windows = self.samples if windows is None else windows
        seq = np.zeros((len(idx), self.max_len), dtype=np.int64)
        tgt = np.zeros((len(idx), self.max_len), dtype=np.int64)
        for j, (u, a, b) in enumerate(windows[idx]):
            w = self.split.sequences[u][a:b]
            seq[j, :len(w) - 1] = w[:-1]
            tgt[j, :len(w) - 1] = w[1:]
        return torch.from_numpy(seq).to(self.device), torch.from_numpy(tgt).to(self.device)

    def _loss(self, idx: np.ndarray) -> torch.Tensor:
        if self.mode == "prefix":
            return self.model.calculate_loss(self._prefix_batch(idx))
        return self.model.all_positions_loss(*self._window_batch(idx))

    # -- the loop's parts ---------------------------------------------------------------------
    def before_training(self) -> list[float]:
        """Optional self-supervised stage (``pretrain_epochs`` > 0, a model that declares
        ``pretrain``): epochs over the training windows, ``model.pretrain_loss(item_seq,
        targets)``, no validation. Returns the mean loss per epoch."""
        epochs = int(self.params.get("pretrain_epochs", 0))
        if epochs <= 0 or not self.caps.pretrain:
            return []
        windows = position_windows(self.split, self.max_len)
        loader = torch.utils.data.DataLoader(
            list(range(len(windows))), batch_size=self.params["batch_size"], shuffle=True,
            generator=self.generator, collate_fn=np.asarray)
        lr = self.params.get("pretrain_learning_rate") or self.params["learning_rate"]
        optimizer = torch.optim.Adam(self.model.parameters(), lr=lr,
                                     weight_decay=self.params["weight_decay"])
        losses = []
        self.model.train()
        for _ in range(epochs):
            total, n = 0.0, 0
            for idx in loader:
                optimizer.zero_grad()
                loss = self.model.pretrain_loss(*self._window_batch(idx, windows))
                loss.backward()
                optimizer.step()
                total, n = total + loss.item(), n + 1
            losses.append(total / max(n, 1))
        return losses

    def train_epoch(self, state: dict) -> dict:
        self.model.train()
        total, batches = 0.0, 0
        for idx in self.loader:
            self.optimizer.zero_grad()
            loss = self._loss(idx)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss.item()} at epoch "
                                         f"{state['epoch']}")
            loss.backward()
            if self.params["clip_grad_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                               self.params["clip_grad_norm"])
            self.optimizer.step()
            total += loss.item()
            batches += 1
        return {"train_loss": total / max(batches, 1)}

    def checkpoint_extra(self) -> dict:
        return {"generator": self.generator.get_state(), "torch_rng": torch.get_rng_state()}

    def restore_extra(self, blob: dict) -> None:
        self.generator.set_state(blob["generator"])
        torch.set_rng_state(blob["torch_rng"])
