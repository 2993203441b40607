"""The contrastive SFT loop of VLM2Rec (docs/vlm2rec.md §2, §5).

Batches of (user history, next item) pairs from the training split only; AdamW over the
trainable (LoRA) parameters with a linear warmup (``warmup_ratio`` of the optimizer steps) and a
linear decay to 0; gradient accumulation (``grad_accum`` micro-batches per optimizer step, each
micro-batch its own in-batch negatives); bf16 autocast on CUDA only; validation NDCG@10 through
the common :class:`~benchmark.evaluation.Evaluator` after every epoch for early stopping (the
harness rule: stop once it has not improved for more than ``patience`` epochs; the best epoch's
adapter is restored).

Checkpoints: after every epoch one file holds the trainable weights, the best ones, the
optimizer, the scheduler, the loop state (history, per-step diagnostics) and the RNG state, read
back with ``torch.load(weights_only=True)``; the pair order of an epoch depends on (seed, epoch)
only, so a resumed run continues exactly.

Several processes (``torchrun --nproc_per_node N``): each process trains on its shard of the
pairs (``DistributedSampler``) with the model wrapped in ``DistributedDataParallel`` (gloo on CPU,
NCCL on GPU); rank 0 validates, broadcasts the early-stopping decision and writes every file.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from benchmark.errors import ConfigError
from benchmark.evaluation import Evaluator
from benchmark.split import Split
from benchmark.training import EpochLoop

log = logging.getLogger(__name__)
StepCallback = Callable[[int, dict], None]


def training_pairs(split: Split, pairs_per_user: int = 0) -> np.ndarray:
    """(user, target position) of every (history, next item) pair of the training split, in
    user order; ``pairs_per_user`` > 0 keeps only each user's last that many pairs."""
    out = []
    for u, seq in enumerate(split.train_sequences()):
        if len(seq) < 2:
            continue
        pos = np.arange(1, len(seq))
        if pairs_per_user > 0:
            pos = pos[-pairs_per_user:]
        out.append(np.stack([np.full(len(pos), u), pos], axis=1))
    if not out:
        raise ConfigError("the training split has no (history, next item) pair to learn from")
    return np.concatenate(out).astype(np.int64)


def linear_warmup_decay(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier: 0 -> 1 over the warmup steps, then linearly down to 0 at ``total_steps``."""
    warmup = max(1, math.ceil(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def distributed_context() -> tuple[int, int]:
    """(rank, world size); joins the process group that ``torchrun`` describes, if any."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(hours=2))  # rank 0 validates meanwhile
    return dist.get_rank(), dist.get_world_size()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def aggregate_steps(rows: list[dict]) -> dict:
    """Per-epoch summary of the step diagnostics: means of the numbers, how often each
    modality was the weak one."""
    out: dict = {}
    if not rows:
        return out
    for key in ("loss", "l_cl", "l_wpcl", "l_crtr", "p_text", "p_image", "rho", "beta"):
        vals = [r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])]
        if vals:
            out[f"mean_{key}"] = float(np.mean(vals))
    weak = [r.get("weak") for r in rows]
    out["image_weak_share"] = sum(w == "image" for w in weak) / len(rows)
    out["text_weak_share"] = sum(w == "text" for w in weak) / len(rows)
    return out


def _merge_micro(terms: list[dict]) -> dict:
    """One optimizer step's diagnostics from its micro-batches (means; the weak modality of the
    mean strengths)."""
    if len(terms) == 1:
        return dict(terms[0])
    out = {}
    for key, val in terms[0].items():
        if isinstance(val, float):
            out[key] = float(np.mean([t[key] for t in terms]))
    pt, pv = out.get("p_text", math.nan), out.get("p_image", math.nan)
    out["weak"] = None if math.isnan(pt) or math.isnan(pv) else ("text" if pt < pv else "image")
    return out


class ContrastiveTrainer(EpochLoop):
    """VLM2Rec's epochs in the harness's one loop (:class:`benchmark.training.EpochLoop`): the
    model's ``forward(histories, targets)`` gives (loss, diagnostics); ``trainable_state`` /
    ``load_trainable_state`` save and restore the adapter. What differs from the sequential
    models' :class:`~benchmark.training.Trainer` is the epoch itself: (history, next item) pairs,
    AdamW with warmup and decay, gradient accumulation, DDP, per-step diagnostics."""

    desc = "VLM2Rec epochs"

    def __init__(self, model, params: dict, split: Split, evaluator: Evaluator, seed: int,
                 checkpoint: Path | None = None, progress: bool = True,
                 on_epoch: Callable[[int, dict], None] | None = None,
                 on_step: StepCallback | None = None):
        self.model, self.params, self.split, self.evaluator = model, params, split, evaluator
        self.seed, self.checkpoint, self.progress = seed, checkpoint, progress
        self.on_epoch, self.on_step = on_epoch, on_step
        self.rank, self.world = distributed_context()
        self.is_main = self.rank == 0
        if self.world > 1 and next(model.parameters()).is_cuda:
            model.to(torch.device("cuda", torch.cuda.current_device()))
        self.device = next(model.parameters()).device
        self.pairs = training_pairs(split, int(params.get("pairs_per_user", 0)))
        self.history_len = int(params["history_len"])
        self.batch_size, self.accum = int(params["batch_size"]), max(1, int(params["grad_accum"]))
        from torch.utils.data.distributed import DistributedSampler

        self.sampler = DistributedSampler(range(len(self.pairs)), num_replicas=self.world,
                                          rank=self.rank, shuffle=True, seed=seed)
        micro = math.ceil(len(self.sampler) / self.batch_size)
        self.steps_per_epoch = math.ceil(micro / self.accum)
        self.probe_every = int(params.get("grad_probe_every", 0))
        self.state: dict = {"steps": []}
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ConfigError("VLM2Rec has no trainable parameter (lora_r = 0?)")
        # one fused kernel for all LoRA tensors on CUDA (hundreds of small tensors per step)
        self.optimizer = torch.optim.AdamW(self.trainable, lr=params["learning_rate"],
                                           weight_decay=params["weight_decay"],
                                           fused=self.device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_warmup_decay(params["epochs"] * self.steps_per_epoch,
                                                params["warmup_ratio"]))
        self.net = model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(model, find_unused_parameters=True)

    @property
    def step_log(self) -> list[dict]:
        """Diagnostics of every optimizer step so far (loss terms, p^t, p^v, rho, weak, beta,
        learning rate; gradient norms per modality on probed steps)."""
        return self.state["steps"]

    # -- batches ------------------------------------------------------------------------------
    def batch(self, idx: list[int]) -> tuple[list[list[int]], list[int]]:
        """Histories (the last ``history_len`` items before each target) and target items."""
        histories, targets = [], []
        for u, p in self.pairs[idx]:
            seq = self.split.sequences[u]
            histories.append(seq[max(0, p - self.history_len):p].tolist())
            targets.append(int(seq[p]))
        return histories, targets

    def _autocast(self):
        dev = next(self.model.parameters()).device
        if dev.type == "cuda" and self.params.get("bf16") and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- the loop's parts ---------------------------------------------------------------------
    def weights(self) -> dict:
        return self.model.trainable_state()

    def load_weights(self, weights: dict) -> None:
        self.model.load_trainable_state(weights)

    def train_epoch(self, state: dict) -> dict:
        summary = aggregate_steps(self._train_epoch(self.net, state))
        return {"train_loss": summary.get("mean_loss", math.nan),
                **{f"train_{k}": v for k, v in summary.items()}}

    def _train_epoch(self, net, state: dict) -> list[dict]:
        self.sampler.set_epoch(state["epoch"])
        order = list(self.sampler)
        micro = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        groups = [micro[i:i + self.accum] for i in range(0, len(micro), self.accum)]
        self.model.train()
        rows = []
        for group in groups:
            terms = []
            self.optimizer.zero_grad(set_to_none=True)
            self.model.probe_grads = self.probe_every > 0 and state["step"] % self.probe_every == 0
            for k, idx in enumerate(group):
                sync = k == len(group) - 1 or self.world == 1
                with (contextlib.nullcontext() if sync else net.no_sync()), self._autocast():
                    loss, t = net(*self.batch(idx))
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"VLM2Rec loss is {loss.item()} at step "
                                                 f"{state['step']}")
                    (loss / len(group)).backward()
                terms.append(t)
            self.model.probe_grads = False
            if self.params["clip_grad_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(self.trainable, self.params["clip_grad_norm"])
            row = {"step": state["step"], "epoch": state["epoch"],
                   "lr": self.scheduler.get_last_lr()[0], **_merge_micro(terms)}
            self.optimizer.step()
            self.scheduler.step()
            rows.append(row)
            state["steps"].append(row)
            if self.on_step and self.rank == 0:
                self.on_step(state["step"], row)
            state["step"] += 1
        return rows

    def validate(self) -> dict:
        """Validation metrics, computed on rank 0 and shared with the other ranks."""
        metrics = super().validate() if self.rank == 0 else None
        if self.world > 1:
            import torch.distributed as dist

            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        return metrics

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint_extra(self) -> dict:
        return {"scheduler": self.scheduler.state_dict(), "rng": rng_state()}

    def restore_extra(self, blob: dict) -> None:
        self.scheduler.load_state_dict(blob["scheduler"])
        set_rng_state(blob["rng"])

    def after_checkpoint(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
