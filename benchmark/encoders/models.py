"""Frozen encoders loaded with ``from_pretrained`` from a local checkpoint folder, and the one
batched encoding loop every encoder goes through.

- :class:`MeanPoolTextEncoder`: any Hugging Face / sentence-transformers text model; the
  embedding is the mean of the last hidden states over the non-padding tokens.
- :class:`DualEncoder`: CLIP/SigLIP-style image-text models (a config with a ``vision_config``);
  embeddings are the model's own ``get_text_features`` / ``get_image_features`` outputs.

Every embedding is L2-normalised (in float32, after any mixed-precision forward pass), so a dot
product is a cosine similarity. On a GPU the forward pass runs under autocast (bf16 where the
card supports it, else fp16); on a CPU in float32. ``trust_remote_code`` is never enabled.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

MODALITIES = ("text", "image")


@dataclass(frozen=True)
class EncodeSettings:
    """Harness-side preprocessing; everything but ``batch_size`` is part of the cache key
    (the checkpoint's own tokenizer/processor files are covered by its content hash)."""

    max_length: int = 256  # cap on text tokens (the checkpoint's own limit applies too)
    image_size: int | None = None  # None: the checkpoint processor's size
    normalize: bool = True  # L2-normalise every embedding
    batch_size: int = 64

    def key(self, kind: str, modality: str) -> dict:
        pooling = "mean" if kind == "text" else "model"
        out: dict = {"pooling": pooling, "normalize": self.normalize}
        if modality == "text":
            out.update(max_length=self.max_length, text="Dataset.item_text")
        else:
            out.update(image_size=self.image_size, image="RGB")
        return out


def checkpoint_kind(path: Path) -> str:
    """``"dual"`` for an image-text checkpoint (its config has a vision tower), else ``"text"``;
    read from ``config.json`` without loading the model."""
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return "dual" if "vision_config" in config else "text"


def resolve_device(device: str = "cpu") -> str:
    """``auto`` -> cuda, else mps, else cpu; an unavailable device is a user error."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available here")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and
                              torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r}: MPS is not available here")
    if kind not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {device!r} (cpu, cuda[:n], mps or auto)")
    return device


def precision(device: str) -> str:
    """The forward-pass precision on ``device``: autocast on GPUs only."""
    import torch

    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp16" if device.startswith("mps") else "fp32"


def autocast(device: str) -> contextlib.AbstractContextManager:
    import torch

    mode = precision(device)
    if mode == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading/saving progress bars and info chatter for a block."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


class _Encoder:
    """Shared parts: the model on a device, eval mode, no gradients, autocast, normalisation."""

    kind = ""
    modalities: tuple[str, ...] = ()

    def __init__(self, model, device: str, settings: EncodeSettings):
        self.model = model.to(device).eval()
        self.device, self.settings = device, settings

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def _forward(self, modality: str, inputs: list) -> Any:
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> list[dict]:
        """Each text's token features (``input_ids``, ...), unpadded: computed once, sorted by
        length and batched by :func:`encode_items`."""
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        keys = [k for k in enc if k in self.token_keys]
        return [{k: enc[k][j] for k in keys} for j in range(len(texts))]

    def _pad(self, tokens: list[dict], padding: bool | str = True) -> dict:
        """A batch of :meth:`tokenize` rows padded as one tokenizer call would pad it."""
        width = {"max_length": self.max_length} if padding == "max_length" else {}
        return self._to_device(self.tokenizer.pad(tokens, padding=padding, return_tensors="pt",
                                                  **width))

    def encode(self, modality: str, inputs: list) -> np.ndarray:
        """Embeddings (len(inputs), dim) float32 of non-missing inputs: token features from
        :meth:`tokenize` for text, PIL images for images."""
        import torch

        with torch.inference_mode(), autocast(self.device):
            out = self._forward(modality, inputs)
        out = out.float()
        if self.settings.normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out.cpu().numpy()

    def _to_device(self, batch) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}


class MeanPoolTextEncoder(_Encoder):
    """A text model (``AutoModel``) with mean pooling over the attention mask."""

    kind = "text"
    modalities = ("text",)
    token_keys = ("input_ids", "token_type_ids", "attention_mask")

    def __init__(self, path: Path, device: str, settings: EncodeSettings):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path, limit = _sentence_transformer_module(path)
        with quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            model = AutoModel.from_pretrained(path, trust_remote_code=False, dtype=torch.float32)
        self.max_length = min(settings.max_length, limit or settings.max_length,
                              _model_max_length(self.tokenizer, model.config))
        super().__init__(model, device, settings)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _forward(self, modality: str, inputs: list):
        batch = self._pad(inputs)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class DualEncoder(_Encoder):
    """A CLIP/SigLIP-style model (``AutoModel`` + ``AutoTokenizer`` + ``AutoImageProcessor``,
    which picks the PIL-based processor when torchvision is absent)."""

    kind = "dual"
    modalities = MODALITIES
    token_keys = ("input_ids", "attention_mask")

    def __init__(self, path: Path, device: str, settings: EncodeSettings):
        import torch
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        with quiet_transformers():
            model = AutoModel.from_pretrained(path, trust_remote_code=False, dtype=torch.float32)
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            self.processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=False)
        if not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
            raise ConfigError(f"{path}: {type(model).__name__} is not an image-text model "
                              "(no get_text_features / get_image_features)")
        text_config = model.config.text_config
        self.max_length = min(settings.max_length,
                              _model_max_length(self.tokenizer, text_config))
        # SigLIP was trained on texts padded to the maximum length, CLIP on EOS pooling.
        self.padding = "max_length" if model.config.model_type.startswith("siglip") else True
        self.image_kwargs = _image_size_kwargs(self.processor, settings.image_size)
        super().__init__(model, device, settings)

    @property
    def dim(self) -> int:
        config = self.model.config
        return int(getattr(config, "projection_dim", None) or config.text_config.hidden_size)

    def _forward(self, modality: str, inputs: list):
        import torch

        if modality == "text":
            out = self.model.get_text_features(**self._pad(inputs, self.padding))
        else:
            batch = self.processor(images=inputs, return_tensors="pt", **self.image_kwargs)
            # a ViT tower at another size needs its position table interpolated; a CNN does not
            vit = "patch_size" in self.model.config.vision_config.to_dict()
            extra = {"interpolate_pos_encoding": True} if self.image_kwargs and vit else {}
            out = self.model.get_image_features(**self._to_device(batch), **extra)
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # older versions


def _model_max_length(tokenizer, config) -> int:
    """The longest input a model takes: its position table, and the tokenizer's limit."""
    limits = [getattr(config, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    return min(int(v) for v in limits if v is not None and v < 1_000_000)


def _sentence_transformer_module(path: Path) -> tuple[Path, int | None]:
    """A sentence-transformers checkpoint keeps its transformer in the folder named by
    ``modules.json`` and its token limit in ``sentence_bert_config.json``."""
    modules = path / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            if module.get("type", "").endswith(".Transformer"):
                path = path / module.get("path", "")
                break
    st_config = path / "sentence_bert_config.json"
    limit = None
    if st_config.is_file():
        limit = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length")
    return path, limit


def _image_size_kwargs(processor, size: int | None) -> dict:
    """Processor arguments that resize (and crop) images to ``size`` pixels."""
    if size is None:
        return {}
    current = dict(getattr(processor, "size", None) or {})
    out = {"size": {"shortest_edge": size} if "shortest_edge" in current
           else {"height": size, "width": size}}
    if getattr(processor, "do_center_crop", False):
        out["crop_size"] = {"height": size, "width": size}
    return out


def load_encoder(path: Path, device: str, settings: EncodeSettings) -> _Encoder:
    """The frozen encoder of a local checkpoint folder, by its kind."""
    cls = DualEncoder if checkpoint_kind(path) == "dual" else MeanPoolTextEncoder
    return cls(path, device, settings)


def encode_items(encoder: _Encoder, modality: str, items: Sequence[int],
                 load: Callable[[int], Any], n_items: int, batch_size: int,
                 progress: bool = False, desc: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Encode the inputs ``load(item)`` of ``items`` in batches; items whose input is None are
    missing: never encoded, zeros and ``present`` False. Returns (values, present).

    Texts are all loaded first (they are small): each distinct text is tokenised once and
    encoded once, in batches of similar token counts (longest first), so batches pad little.
    Images are loaded batch by batch in item order (decoded images are large)."""
    from tqdm.auto import tqdm

    values = np.zeros((n_items, encoder.dim), dtype=np.float32)
    present = np.zeros(n_items, dtype=bool)
    if modality == "text":
        texts = {i: v for i in items if (v := load(i)) is not None}
        distinct = list(dict.fromkeys(texts.values()))
        tokens = encoder.tokenize(distinct) if distinct else []
        order = sorted(range(len(distinct)), key=lambda j: -len(tokens[j]["input_ids"]))
        out = np.zeros((len(distinct), encoder.dim), dtype=np.float32)
        with tqdm(total=len(distinct), desc=desc, unit="text", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                out[chunk] = encoder.encode(modality, [tokens[j] for j in chunk])
                bar.update(len(chunk))
        if texts:
            row = {text: j for j, text in enumerate(distinct)}
            ids = np.fromiter(texts, dtype=np.int64, count=len(texts))
            values[ids] = out[[row[t] for t in texts.values()]]
            present[ids] = True
        return values, present
    with tqdm(total=len(items), desc=desc, unit="item", disable=not progress) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            loaded = [(i, v) for i in chunk if (v := load(i)) is not None]
            if loaded:
                ids = np.fromiter((i for i, _ in loaded), dtype=np.int64, count=len(loaded))
                values[ids] = encoder.encode(modality, [v for _, v in loaded])
                present[ids] = True
            bar.update(len(chunk))
    return values, present
