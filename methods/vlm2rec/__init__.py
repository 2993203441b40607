"""VLM2Rec: VLM embedders for multimodal sequential recommendation (docs/vlm2rec.md).

Kept light: the public names below are imported lazily (torch/transformers/peft load only when
one of them is first used).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "ItemContent": "embedder",
    "Branches": "embedder",
    "VLMEmbedder": "embedder",
    "build_tiny_checkpoint": "tiny",
    "paper_config": "tiny",
    "is_tiny_checkpoint": "tiny",
    "stand_in_kind": "tiny",
    "probe_dataset": "pretrain",
    "resolve_pretrained": "pretrain",
}

__all__ = [
    "Branches",
    "ItemContent",
    "VLMEmbedder",
    "build_tiny_checkpoint",
    "is_tiny_checkpoint",
    "paper_config",
    "probe_dataset",
    "resolve_pretrained",
    "stand_in_kind",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
