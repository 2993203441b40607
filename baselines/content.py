"""Frozen item content features as model buffers (shared by the content baselines).

The runner puts the features a model declares on its dataset object as
``dataset.item_features[modality]`` (:class:`benchmark.features.ModalityFeatures`). A model keeps
them as non-persistent buffers: they follow ``model.to(device)`` but stay out of checkpoints, since
the feature cache, not the model file, is their source.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmark.errors import ConfigError


def register_features(module: nn.Module, dataset, modality: str, n_items: int) -> int:
    """Register ``<modality>_values`` (n_items, dim) float32 and ``<modality>_present`` (n_items,)
    bool on ``module``; returns the feature size. Row 0 (padding) is never present."""
    feats = getattr(dataset, "item_features", {}).get(modality)
    if feats is None:
        raise ConfigError(f"{type(module).__name__} needs {modality!r} item features, but the "
                          f"dataset has none (was the model built through benchmark.runner?)")
    values = torch.as_tensor(feats.values, dtype=torch.float32)
    present = torch.as_tensor(feats.present, dtype=torch.bool).clone()
    if values.shape[0] != n_items or present.shape != (n_items,):
        raise ConfigError(f"{modality} features have {values.shape[0]} rows, the dataset "
                          f"{n_items} item ids")
    present[0] = False
    module.register_buffer(f"{modality}_values", values, persistent=False)
    module.register_buffer(f"{modality}_present", present, persistent=False)
    return int(values.shape[1])


def lookup(module: nn.Module, modality: str, items: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The features of ``items`` (any shape S): values (*S, dim) and present (*S)."""
    return (getattr(module, f"{modality}_values")[items],
            getattr(module, f"{modality}_present")[items])


def present_mean(module: nn.Module, modality: str) -> torch.Tensor:
    """Mean feature vector over the items that have the modality (zeros if none do)."""
    values = getattr(module, f"{modality}_values")
    present = getattr(module, f"{modality}_present")
    if not present.any():
        return torch.zeros(values.shape[1])
    return values[present].mean(0)


def init_like_sasrec(module: nn.Module, std: float) -> None:
    """RecBole SASRec's initialisation: normal(0, std) weights, zero biases, unit LayerNorms
    (use as ``model.apply(functools.partial(init_like_sasrec, std=...))``)."""
    if getattr(module, "_zero_init", False):
        return  # a hybrid model's ID embedding (item_id_embedding) starts at zero
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()


def item_id_embedding(n_items: int, hidden_size: int) -> nn.Embedding:
    """The ID half of a hybrid (content + ID) item embedding, initialised to zeros.

    Why zeros: an item's ID row moves only when the item occurs in training (as an input or,
    with ``train_candidates: seen``, as a softmax candidate). A never-trained (cold) item keeps a
    zero row, so it is scored by its content alone, not by the noise of a random initialisation
    that nothing corrected; a warm item's row learns what content cannot say (its popularity,
    its collaborative neighbourhood). Mark the module ``_zero_init`` so that a model-wide
    ``apply(init_like_sasrec)`` leaves it at zero."""
    embedding = nn.Embedding(n_items, hidden_size, padding_idx=0)
    nn.init.zeros_(embedding.weight)
    embedding._zero_init = True
    return embedding
