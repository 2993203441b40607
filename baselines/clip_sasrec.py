"""Frozen CLIP + SASRec: a pure content baseline.

Each item is its frozen CLIP image and text embedding, fused (``concat`` or ``mean``) and mapped
by a learned linear projection to the hidden size; a SASRec transformer runs over the sequence of
projected items, and every item is scored by a dot product with its projected embedding (training:
CE over the items of the training split, ``train_candidates: seen``, or over all items, ``all``;
see :mod:`baselines.candidates`). There is no item ID embedding unless ``use_id: true``.

The projected table stands in for SASRec's ``nn.Embedding``: :class:`ContentItemEmbedding` is
called with ids and its ``weight`` is the whole table, so the harness's SASRec code (forward, CE
losses, ``full_sort_predict``) runs on it unchanged.
"""

from __future__ import annotations

from benchmark.recbole_compat import import_recbole

import_recbole()

import torch
from torch import nn

from baselines.content import item_id_embedding, lookup, present_mean, register_features
from baselines.sasrec import SASRec
from benchmark.errors import ConfigError

FUSIONS = ("concat", "mean")
MODALITIES = ("image", "text")


def parse_modalities(value) -> tuple[str, ...]:
    """``"image,text"`` (or a list) -> the modalities the model reads, in a fixed order."""
    chosen = value.split(",") if isinstance(value, str) else list(value)
    chosen = {m.strip() for m in chosen if m.strip()}
    if not chosen or chosen - set(MODALITIES):
        raise ConfigError(f"clip_sasrec: modalities must be a non-empty subset of "
                          f"{','.join(MODALITIES)}, got {value!r}")
    return tuple(m for m in MODALITIES if m in chosen)


class ContentItemEmbedding(nn.Module):
    """Item vectors from frozen image and text features (drop-in for ``nn.Embedding``).

    ``concat``: [image; text] -> linear; a missing modality is replaced by a learned vector
    (initialised to that modality's mean feature). ``mean``: the mean of the modalities the item
    has -> linear (both feature sizes must agree, as in CLIP's shared space); an item with neither
    gets a learned vector. The padding id 0 maps to zeros. A modality left out of ``modalities``
    is missing for every item (a planted text-only or image-only model, for the world check and
    the collapse verdicts): it then carries no information about any item.
    """

    def __init__(self, dataset, n_items: int, hidden_size: int, fusion: str, use_id: bool,
                 modalities: tuple[str, ...] = MODALITIES):
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"clip_sasrec: fusion must be one of {FUSIONS}, got {fusion!r}")
        self.n_items, self.fusion, self.modalities = n_items, fusion, modalities
        dims = [register_features(self, dataset, m, n_items) for m in ("image", "text")]
        if fusion == "concat":
            self.missing_image = nn.Parameter(present_mean(self, "image"))
            self.missing_text = nn.Parameter(present_mean(self, "text"))
            self.projection = nn.Linear(sum(dims), hidden_size)
        else:
            if dims[0] != dims[1]:
                raise ConfigError(f"clip_sasrec: fusion 'mean' needs image and text features of "
                                  f"one size (one CLIP space), got {dims[0]} and {dims[1]}")
            self.missing_content = nn.Parameter(
                (present_mean(self, "image") + present_mean(self, "text")) / 2)
            self.projection = nn.Linear(dims[0], hidden_size)
        self.id_embedding = item_id_embedding(n_items, hidden_size) if use_id else None

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        image, has_image = lookup(self, "image", items)
        text, has_text = lookup(self, "text", items)
        if "image" not in self.modalities:
            has_image = torch.zeros_like(has_image)
        if "text" not in self.modalities:
            has_text = torch.zeros_like(has_text)
        if self.fusion == "concat":
            image = torch.where(has_image.unsqueeze(-1), image, self.missing_image)
            text = torch.where(has_text.unsqueeze(-1), text, self.missing_text)
            x = torch.cat([image, text], dim=-1)
        else:
            w_image, w_text = has_image.unsqueeze(-1).float(), has_text.unsqueeze(-1).float()
            count = w_image + w_text
            x = (image * w_image + text * w_text) / count.clamp(min=1.0)
            x = torch.where(count > 0, x, self.missing_content)
        out = self.projection(x)
        if self.id_embedding is not None:
            out = out + self.id_embedding(items)
        return out * (items > 0).unsqueeze(-1)

    @property
    def weight(self) -> torch.Tensor:
        """The whole table (n_items, hidden), row 0 (padding) zeros."""
        return self(torch.arange(self.n_items, device=self.projection.weight.device))


class CLIPSASRec(SASRec):
    """SASRec over projected frozen CLIP item embeddings (``fusion``, ``use_id`` in config)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.item_embedding = ContentItemEmbedding(dataset, self.n_items, self.hidden_size,
                                                   config["fusion"], bool(config["use_id"]),
                                                   parse_modalities(config["modalities"]))
        self.item_embedding.projection.apply(self._init_weights)
