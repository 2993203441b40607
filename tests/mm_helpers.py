"""Helpers for the content-model tests: hand-made image/text features, models built through the
runner (with the encoders stubbed out), and RecBole's own data pipeline on a small dataset."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch

from benchmark.features import ModalityFeatures
from benchmark.recbole_compat import import_recbole, recbole_config, recbole_workdir
from benchmark.registry import get_model_spec

EMPTY_ITEM = 3  # the item with neither image nor text


def random_features(n_items: int, image_dim: int = 12, text_dim: int = 10, seed: int = 0,
                    identity: bool = False) -> dict[str, ModalityFeatures]:
    """Gaussian image/text features; every other item has no image, ``EMPTY_ITEM`` has nothing.

    ``identity``: the text is a noisy one-hot of the item id (and the image a fixed random code),
    so that a content model can tell every item apart and learn the id structure of the data."""
    rng = np.random.default_rng(seed)
    if identity:
        text_dim = n_items
    image = rng.normal(size=(n_items, image_dim)).astype(np.float32)
    text = rng.normal(size=(n_items, text_dim)).astype(np.float32)
    if identity:
        text = (np.eye(n_items, dtype=np.float32) * 3 + 0.1 * text).astype(np.float32)
    has_image = np.arange(n_items) % 2 == 0
    has_text = np.ones(n_items, dtype=bool)
    has_image[EMPTY_ITEM] = has_text[EMPTY_ITEM] = False
    has_image[0] = has_text[0] = False
    image[~has_image] = 0.0
    text[~has_text] = 0.0
    return {"image": ModalityFeatures(image, has_image, "test"),
            "text": ModalityFeatures(text, has_text, "test")}


def build(monkeypatch, name: str, data, run_dir: Path, features: dict, seed: int = 0,
          overrides: dict | None = None):
    """``benchmark.lifecycle.build_model`` with the given features in place of the encoders."""
    from benchmark.lifecycle import build_model

    stub = types.ModuleType("benchmark.encoders")
    stub.prepare_features = lambda *args, **kwargs: features
    monkeypatch.setitem(sys.modules, "benchmark.encoders", stub)
    spec = get_model_spec(name)
    params = spec.resolve("tiny", overrides)
    return build_model(spec, params, data, run_dir, seed, "cpu").model, params


def recbole_pipeline(tmp: Path, model_cls, name: str, overrides: dict):
    """RecBole's own Config, dataset and dataloaders on a small dataset (as in test_parity)."""
    import_recbole()
    from conftest import random_sequences
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from benchmark.data.dataset import write_dataset

    root = write_dataset(tmp / "rb", "rb", random_sequences(n_users=30, n_items=40), [])
    params = get_model_spec(name).resolve("tiny", overrides)
    rb = {**params, "seed": 0, "train_batch_size": 32, "clip_grad_norm": None,
          "reproducibility": True}
    config = recbole_config(model_cls, root, "rb", rb, tmp / "run")
    with recbole_workdir(tmp / "run"):
        init_seed(0, True)
        train, _, _ = data_preparation(config, create_dataset(config))
    return config, train


def prefix_interaction(model, seq: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor):
    from recbole.data.interaction import Interaction

    return Interaction({model.USER_ID: torch.arange(len(seq)), model.ITEM_SEQ: seq,
                        model.ITEM_SEQ_LEN: lengths, model.POS_ITEM_ID: target})


def small_batch(n_items: int, max_len: int, batch: int = 6, seed: int = 0):
    """Random right-padded histories (B, L), their lengths, next items and all-position targets."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (batch,), generator=g)
    lengths[0] = max_len
    full = torch.randint(1, n_items, (batch, max_len + 1), generator=g)
    full[1, 0] = EMPTY_ITEM
    seq = torch.zeros(batch, max_len, dtype=torch.long)
    targets = torch.zeros(batch, max_len, dtype=torch.long)
    for b, n in enumerate(lengths.tolist()):
        seq[b, :n] = full[b, :n]
        targets[b, :n] = full[b, 1:n + 1]
    return seq, lengths, full[torch.arange(batch), lengths], targets


def recbole_epoch(config, model, train, run_dir: Path) -> tuple[float, list[bool]]:
    """One epoch of RecBole's own Trainer: (the loss, per parameter whether it changed)."""
    import torch
    from recbole.trainer import Trainer as RecBoleTrainer

    from benchmark.recbole_compat import recbole_workdir

    before = [p.detach().clone() for p in model.parameters()]
    with recbole_workdir(run_dir):
        loss = RecBoleTrainer(config, model)._train_epoch(train, 0, show_progress=False)
    return float(loss), [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
