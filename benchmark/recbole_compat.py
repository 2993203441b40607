"""Importing RecBole 1.2.1 safely on numpy 2 / torch >= 2.6, and building its Config objects.

Three shims, applied once before RecBole is imported (see docs/install.md):
1. numpy 2 removed aliases that RecBole and ray use (RecBole's Config restores some of them
   itself, but its metric classes need them without a Config);
2. (handled at load sites) torch >= 2.6 defaults to ``weights_only=True``;
3. importing ``recbole.model.sequential_recommender`` switches on autograd anomaly detection
   for the whole process (a 1.5-2.5x slowdown of every backward pass): switched off again.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path

_READY = False


def import_recbole() -> None:
    """Apply the shims and import RecBole's sequential models once per process."""
    global _READY
    if _READY:
        return
    import numpy as np

    for alias, target in (("float_", np.float64), ("complex_", np.complex128),
                          ("unicode_", np.str_), ("bool8", np.bool_), ("float", np.float64),
                          ("int", np.int_), ("object", np.object_)):
        if alias not in np.__dict__:
            setattr(np, alias, target)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import torch

    importlib.import_module("recbole.model.sequential_recommender")
    torch.autograd.set_detect_anomaly(False)
    # nn.TransformerEncoder's eval "fast path" returned NaN for padded sequences here.
    torch.backends.mha.set_fastpath_enabled(False)
    _READY = True


def recbole_data_path(dataset_root: Path, name: str, run_dir: Path) -> Path:
    """RecBole wants ``<data_path>/<name>/<name>.inter``: link the dataset's files into that shape."""
    folder = run_dir / "recbole-data" / name
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".inter", ".item"):
        src, dst = Path(dataset_root) / f"{name}{suffix}", folder / f"{name}{suffix}"
        if src.exists() and not dst.exists():
            dst.symlink_to(src.resolve())
    return folder.parent


def recbole_config(model_cls, dataset_root: str | Path, name: str, params: dict,
                   run_dir: str | Path):
    """A RecBole ``Config`` for ``model_cls`` on a harness dataset, RecBole's files in ``run_dir``."""
    import_recbole()
    from recbole.config import Config

    run_dir = Path(run_dir)
    base = {
        "data_path": str(recbole_data_path(Path(dataset_root), name, run_dir)),
        "checkpoint_dir": str(run_dir / "saved"),
        "log_wandb": False,
        "show_progress": False,
        "state": "WARNING",
        "use_gpu": params.get("device", "cpu") != "cpu",
        # RecBole sets CUDA_VISIBLE_DEVICES to gpu_id: under torchrun each rank keeps its own GPU.
        "gpu_id": os.environ.get("LOCAL_RANK", "0"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                      "mode": "full"},
        "train_neg_sample_args": None,
        "loss_type": "CE",
    }
    base.update(params)
    import sys

    argv, sys.argv = sys.argv, sys.argv[:1]  # RecBole's Config also reads --key=value from argv
    try:
        with recbole_workdir(run_dir):
            return Config(model=model_cls, dataset=name, config_dict=base)
    finally:
        sys.argv = argv


@contextlib.contextmanager
def recbole_workdir(run_dir: str | Path):
    """RecBole writes ./log, ./log_tensorboard and ./saved into the working directory (and its
    Trainer keeps writing there later): run RecBole code inside the run's own folder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(run_dir)
    try:
        yield run_dir
    finally:
        os.chdir(cwd)


class DatasetView:
    """What a RecBole model's constructor reads from its dataset, served from a harness dataset,
    plus the item content features the model asked for (``benchmark.features``)."""

    def __init__(self, data, item_features: dict | None = None, split=None):
        self.data = data
        self.item_features = item_features or {}
        self.split = split  # read by a model whose backbone is trained on the training items

    def num(self, field: str) -> int:
        return self.data.n_users if field == "user_id" else self.data.n_items

    @property
    def user_num(self) -> int:  # read by some RecBole models (Caser, FPMC, SINE, TransRec)
        return self.data.n_users

    @property
    def item_num(self) -> int:
        return self.data.n_items
