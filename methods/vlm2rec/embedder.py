"""VLM embedder for VLM2Rec (docs/vlm2rec.md §1).

Any supported Hugging Face image-text-to-text checkpoint (Qwen2-VL, Qwen2.5-VL, SmolVLM, Idefics3,
FastVLM; hub name or local folder) is loaded through the standard ``from_pretrained`` path. An
entity's embedding is the last-layer hidden state of the last token of its prompt,
L2-normalised. External fusion (default) encodes the text and the image(s) of an entity in
separate prompts and sums the two unit vectors; internal fusion (the paper's ablation)
encodes one joint prompt. A missing modality is a missing branch: it is never fed to the model.

Prompts are token ids built from cached pieces (``tokens.py``: every text and template piece is
tokenised once); the prompts of a batch, all its branches together, are grouped by length into
as few right-padded forward passes as pay (``length_buckets``). LoRA (peft) sits on
the attention and MLP projections of the language model only; ``lora=None`` leaves the whole
backbone frozen (a raw VLM embedder) and ``trainable_parameters()`` is then empty. Since the vision
tower is always frozen, its output for each image is computed once and cached (LRU by
``str(image)``, which names the perturbation of a perturbed image).
Prompt templates live in ``prompts.py``.

Tiny models run far faster with ``torch.set_num_threads(1)`` on a busy 2-core machine (OpenMP
spinning made them ~15x slower with 2 threads while other processes were running).
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import prompts
from .tokens import PromptTokens

DEFAULT_LORA: dict[str, Any] = {"r": 16, "alpha": 32, "dropout": 0.05, "targets": "auto"}
#: Linear layers LoRA targets under ``targets="auto"`` (those present in the language model).
LORA_CANDIDATES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_VISION_CHUNK = 256  # images per vision-tower call when filling the cache
EMBEDDER_CONFIG = "vlm2rec_embedder.json"


@dataclass
class ItemContent:
    """One item's raw content."""

    text: str | None = None  # None or blank: missing text
    image: Any = None  # a Path (None, missing or unreadable file: missing image), or an
    # object with open() -> RGB image or None (a perturbed image)


@dataclass
class Branches:
    """Embeddings of a batch of B entities (items or users).

    ``text``/``image`` are unit vectors where present and zeros elsewhere. ``fused`` is
    text + image over present branches (external fusion) or the joint prompt's unit vector
    (internal fusion); it is not re-normalised. ``fused_present``: the entity had any content.
    """

    text: torch.Tensor
    text_present: torch.Tensor
    image: torch.Tensor
    image_present: torch.Tensor
    fused: torch.Tensor
    fused_present: torch.Tensor | None = None

    def detach(self) -> Branches:
        """Copy without autograd history."""
        return Branches(**{k: None if v is None else v.detach() for k, v in vars(self).items()})

    def to(self, device: torch.device | str) -> Branches:
        """Copy on ``device``."""
        return Branches(**{k: None if v is None else v.to(device) for k, v in vars(self).items()})


# ----------------------------------------------------------------------------------- families


class _Family:
    """Per-family image handling and model inputs. Processors are driven by hand (no video
    processor or torchvision needed); prompts are tokenised with one image token per image and
    expanded in id space. The vision tower is frozen (LoRA only touches the language model), so
    its per-image outputs are computed once and cached by the embedder."""

    prompt_family = ""

    def __init__(self, config: Any, tokenizer: Any, image_processor: Any, image_size: int):
        self.config = config
        self.image_processor = image_processor
        self.image_token_id = int(config.image_token_id)
        self.side = image_size

    @property
    def slot(self) -> str:
        return prompts.IMAGE_SLOT[self.prompt_family]

    def preprocess(self, images: list[Any]) -> list[Any]:
        """PIL RGB images -> processor output per image (one processor call: its per-call
        overhead dwarfs the work on small images)."""
        raise NotImplementedError

    def encode_images(self, core: nn.Module, pixels: list[Any]) -> list[Any]:
        """Vision tower + projector on preprocessed images -> one cache payload per image."""
        raise NotImplementedError

    def image_ids(self, payload: Any) -> list[int]:
        """Token ids that replace the image token for this image."""
        raise NotImplementedError

    def model_inputs(
        self, ids: torch.Tensor, valid: torch.Tensor, payloads: list[Any]
    ) -> dict[str, Any]:
        """Model inputs of right-padded prompts (``valid``: the real tokens). No attention mask:
        causal attention keeps every real token from the padding after it."""
        raise NotImplementedError


def _positions(valid: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore padding (pad positions get 0)."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0) * valid


def _precomputed(features: list[torch.Tensor] | torch.Tensor) -> dict[str, Any]:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return {"image": BaseModelOutputWithPooling(pooler_output=features)}


class _QwenVL(_Family):
    """Qwen2-VL / Qwen2.5-VL: dynamic-resolution patches, patch merger, M-RoPE."""

    prompt_family = "qwen"

    def __init__(self, config: Any, tokenizer: Any, image_processor: Any, image_size: int):
        super().__init__(config, tokenizer, image_processor, image_size)
        self.merge = int(image_processor.merge_size)
        factor = int(image_processor.patch_size) * self.merge
        # a square multiple of patch * merge: the processor's smart_resize keeps it unchanged
        self.side = max(factor, round(image_size / factor) * factor)
        self._layouts: dict[tuple, np.ndarray] = {}  # row layout -> positions

    def preprocess(self, images: list[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        from PIL import Image

        images = [im.resize((self.side, self.side), Image.Resampling.BICUBIC) for im in images]
        area = self.side * self.side
        out = self.image_processor(
            images=images, size={"shortest_edge": area, "longest_edge": area}, return_tensors="pt"
        )
        grids = out["image_grid_thw"]
        patches = out["pixel_values"].split(grids.prod(-1).tolist())
        return list(zip(patches, grids))

    def encode_images(self, core: nn.Module, pixels: list[Any]) -> list[Any]:
        device = next(core.parameters()).device
        grids = torch.stack([g for _, g in pixels])
        out = core.get_image_features(
            torch.cat([p for p, _ in pixels]).to(device), grids.to(device), return_dict=True
        )
        return [(f.clone(), g) for f, g in zip(out.pooler_output, grids)]

    def image_ids(self, payload: Any) -> list[int]:
        return [self.image_token_id] * payload[0].shape[0]

    def model_inputs(
        self, ids: torch.Tensor, valid: torch.Tensor, payloads: list[Any]
    ) -> dict[str, Any]:
        if not payloads:  # text only: 1-D positions (all three M-RoPE axes equal)
            return {"input_ids": ids, "position_ids": _positions(valid)}
        grids = torch.stack([g for _, g in payloads])
        mm_types = (ids == self.image_token_id).int()
        return {
            "input_ids": ids,
            "position_ids": self.mrope_positions(mm_types, valid, grids),
            "mm_token_type_ids": mm_types,
            "image_grid_thw": grids,
            "mm_encoder_outputs": _precomputed([f for f, _ in payloads]),
        }

    def mrope_positions(
        self, mm_types: torch.Tensor, mask: torch.Tensor, grids: torch.Tensor
    ) -> torch.Tensor:
        """(3, B, L) M-RoPE position ids as the model's ``get_rope_index`` computes them for
        images (text: one step per token on all axes; an image: (t, h, w) offsets from the
        current position, which then advances by max(h, w)), with numpy instead of per-image
        torch ops (the model's version dominated the cost of a tiny model's forward), and
        memoised per row layout (token types and image shapes): prompts repeat their layout."""
        types, valid = mm_types.numpy().astype(bool), mask.numpy().astype(bool)
        n_rows, length = types.shape
        out = np.zeros((3, n_rows, length), dtype=np.int64)
        shapes = [(t, h // self.merge, w // self.merge) for t, h, w in grids.tolist()]
        n_images = (types & valid).sum(1)
        k = 0
        for b in range(n_rows):
            cols = np.flatnonzero(valid[b])
            if not n_images[b]:  # a text row: one step per token
                out[:, b, cols] = np.arange(len(cols))
                continue
            img = types[b, cols]
            n_tokens, m = int(n_images[b]), 0
            while n_tokens > 0:  # this row's images
                n_tokens -= int(np.prod(shapes[k + m]))
                m += 1
            key = (img.tobytes(), tuple(shapes[k : k + m]))
            if (pos := self._layouts.get(key)) is None:
                pos = self._layouts[key] = self._row_positions(img, shapes[k : k + m])
            k += m
            out[:, b, cols] = pos
        if len(self._layouts) > 4096:
            self._layouts.clear()
        return torch.from_numpy(out)

    def _row_positions(self, img: np.ndarray, shapes: list[tuple[int, int, int]]) -> np.ndarray:
        pos = np.empty((3, len(img)), dtype=np.int64)
        bounds = np.flatnonzero(np.diff(img.astype(np.int8))) + 1
        cur, k = 0, 0
        for s, e in zip(np.r_[0, bounds], np.r_[bounds, len(img)]):
            if not img[s]:
                pos[:, s:e] = np.arange(cur, cur + e - s)
                cur += e - s
                continue
            while s < e:  # one run may hold several adjacent images
                t, h, w = shapes[k]
                k += 1
                grid = np.indices((t, h, w)).reshape(3, -1)
                pos[:, s : s + grid.shape[1]] = grid + cur
                cur += max(h, w)
                s += grid.shape[1]
        return pos


class _Idefics3(_Family):
    """SmolVLM / Idefics3: fixed-size images (no splitting), pixel-shuffle connector."""

    prompt_family = "idefics3"

    def __init__(self, config: Any, tokenizer: Any, image_processor: Any, image_size: int):
        super().__init__(config, tokenizer, image_processor, image_size)
        # the connector needs the encoder's native size: ``image_size`` does not apply here
        self.side = int(config.vision_config.image_size)
        vocab = tokenizer.get_vocab()
        fake = vocab["<fake_token_around_image>"]
        glob = [vocab["<global-img>"]] if "<global-img>" in vocab else []
        self._before, self._after = [fake, *glob], [fake]

    def preprocess(self, images: list[Any]) -> list[torch.Tensor]:
        from PIL import Image

        images = [im.resize((self.side, self.side), Image.Resampling.BICUBIC) for im in images]
        edge = {"longest_edge": self.side}
        out = self.image_processor(
            images=[[im] for im in images],
            do_image_splitting=False,
            size=edge,
            max_image_size=edge,
            return_tensors="pt",
        )
        return list(out["pixel_values"])  # (1, 3, S, S) each: one sample per image

    def encode_images(self, core: nn.Module, pixels: list[Any]) -> list[Any]:
        device = next(core.parameters()).device
        out = core.get_image_features(torch.stack(pixels).to(device), return_dict=True)
        return [f.clone() for f in out.pooler_output]  # one sample per image

    def image_ids(self, payload: Any) -> list[int]:
        return self._before + [self.image_token_id] * payload.shape[0] + self._after

    def model_inputs(
        self, ids: torch.Tensor, valid: torch.Tensor, payloads: list[Any]
    ) -> dict[str, Any]:
        inputs = {"input_ids": ids, "position_ids": _positions(valid)}
        if payloads:
            inputs["mm_encoder_outputs"] = _precomputed(list(payloads))
        return inputs


class _FastVLM(_Family):
    """FastVLM (LLaVA-style): a convolutional tower whose (C, H, W) feature map becomes H x W
    tokens through a two-layer projector; images are squares of side ``image_size``."""

    prompt_family = "llava-qwen"

    def preprocess(self, images: list[Any]) -> list[torch.Tensor]:
        from PIL import Image

        side = self.side
        images = [im.resize((side, side), Image.Resampling.BICUBIC) for im in images]
        out = self.image_processor(images=images, size={"shortest_edge": side},
                                   crop_size={"height": side, "width": side}, return_tensors="pt")
        return list(out["pixel_values"])

    def encode_images(self, core: nn.Module, pixels: list[Any]) -> list[Any]:
        device = next(core.parameters()).device
        out = core.get_image_features(torch.stack(pixels).to(device), return_dict=True)
        return [f.clone() for f in out.pooler_output]  # (H x W, d) per image

    def image_ids(self, payload: Any) -> list[int]:
        return [self.image_token_id] * payload.shape[0]

    def model_inputs(
        self, ids: torch.Tensor, valid: torch.Tensor, payloads: list[Any]
    ) -> dict[str, Any]:
        inputs = {"input_ids": ids, "position_ids": _positions(valid)}
        if payloads:  # the model scatters the rows in order into the image tokens
            inputs["mm_encoder_outputs"] = _precomputed(torch.cat(list(payloads)))
        return inputs


_FAMILIES: dict[str, type[_Family]] = {
    "fast_vlm": _FastVLM,
    "qwen2_vl": _QwenVL,
    "qwen2_5_vl": _QwenVL,
    "smolvlm": _Idefics3,
    "idefics3": _Idefics3,
}


# ------------------------------------------------------------------------------------ embedder


class VLMEmbedder(nn.Module):
    """Last-token VLM embedder with external (sum) or internal (joint prompt) fusion.

    Args:
        model: hub name or local folder of a Qwen2-VL, Qwen2.5-VL, SmolVLM, Idefics3 or FastVLM
            checkpoint.
        fusion: "external" (separate text / image prompts, summed) or "internal" (one prompt).
        lora: peft LoRA settings merged over ``DEFAULT_LORA`` (r, alpha, dropout, targets: "auto",
            a comma string or a list of Linear names in the language model); None: frozen.
        history_len: a user prompt holds the last ``history_len`` items of the history.
        max_text_tokens: each item text is cut to this many tokens.
        image_size: Qwen family: images become squares of side ``image_size`` rounded to a
            multiple of patch * merge (28 px for real checkpoints); FastVLM: squares of side
            ``image_size`` (the tower is convolutional); SmolVLM / Idefics3 use the
            vision encoder's native size (its connector requires it) and ignore this.
        dtype: "float32", "bfloat16" or "float16" weights (LoRA weights stay float32).
        gradient_checkpointing: non-reentrant activation checkpointing in train mode.
        trust_remote_code: passed to every ``from_pretrained``; False unless asked.
        image_cache_mb: budget of the per-image vision-output cache (on the model's device).
        bucket_overhead_tokens: prompts are grouped into forward passes by length; one more
            pass is taken when it saves more than this many padding tokens.
        random_weights: build the backbone from ``model``'s config with random weights (seeded
            by the torch RNG; throughput checks at a real model's shape, nothing downloaded),
            on ``init_device``.

    The module starts in eval mode; call ``.train()`` for LoRA training (dropout, gradient
    checkpointing). No gradient context is imposed: wrap inference in ``torch.no_grad()``.
    """

    def __init__(
        self,
        model: str | Path,
        fusion: str = "external",
        lora: dict | None = None,
        history_len: int = 10,
        max_text_tokens: int = 64,
        image_size: int = 64,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        image_cache_mb: float = 1024.0,
        bucket_overhead_tokens: int = 128,
        random_weights: bool = False,
        init_device: str = "cpu",
    ):
        super().__init__()
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoModelForImageTextToText,
            AutoTokenizer,
        )

        if fusion not in ("external", "internal"):
            raise ValueError(f"fusion must be 'external' or 'internal', got {fusion!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.model_name = str(model)
        self.fusion = fusion
        self.history_len = int(history_len)
        self.max_text_tokens = int(max_text_tokens)
        self.image_size = int(image_size)
        self.dtype_name = dtype
        self.trust_remote_code = trust_remote_code
        remote = {"trust_remote_code": trust_remote_code}

        config = AutoConfig.from_pretrained(model, **remote)
        if config.model_type not in _FAMILIES:
            raise ValueError(
                f"unsupported VLM family {config.model_type!r}; supported: {sorted(_FAMILIES)}"
            )
        if random_weights:
            with torch.device(init_device):
                hf = AutoModelForImageTextToText.from_config(config, dtype=_DTYPES[dtype])
        else:
            hf = AutoModelForImageTextToText.from_pretrained(
                model, config=config, dtype=_DTYPES[dtype], **remote
            )
        tokenizer = AutoTokenizer.from_pretrained(model, **remote)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        image_processor = AutoImageProcessor.from_pretrained(model, backend="pil", **remote)
        self.tokenizer = tokenizer
        self.family = _FAMILIES[config.model_type](config, tokenizer, image_processor, image_size)
        self.model_type = config.model_type

        hf.config.use_cache = False
        hf.requires_grad_(False)
        if gradient_checkpointing:  # non-reentrant: works with frozen inputs and LoRA
            kwargs = {"use_reentrant": False}
            if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.x name
                hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.gradient_checkpointing = gradient_checkpointing
        self.lora = None if lora is None else {**DEFAULT_LORA, **lora}
        self._peft: Any = None
        if self.lora is not None:
            from peft import LoraConfig, get_peft_model

            lora_cfg = LoraConfig(
                r=int(self.lora["r"]),
                lora_alpha=float(self.lora["alpha"]),
                lora_dropout=float(self.lora["dropout"]),
                target_modules=self._target_regex(hf, self.lora["targets"]),
                bias="none",
            )
            with warnings.catch_warnings():  # peft calls a transformers name deprecated in v5
                warnings.simplefilter("ignore", FutureWarning)
                self._peft = get_peft_model(hf, lora_cfg)
        # half-precision weights run under autocast (``_forward``), LoRA weights stay float32:
        # peft's cast of every LoRA input to float32 would only be cast back by autocast
        self._autocast = _DTYPES[dtype] if _DTYPES[dtype] != torch.float32 else None
        if self._peft is not None and self._autocast is not None:
            for module in self._peft.modules():
                if hasattr(module, "cast_input_dtype_enabled"):
                    module.cast_input_dtype_enabled = False
        self.backbone = self._peft if self._peft is not None else hf
        # the multimodal trunk without the LM head (LoRA layers are injected in place)
        self.__dict__["_core"] = hf.model
        self.__dict__["_anchor"] = next(hf.parameters())
        self._dim = int(hf.get_decoder().config.hidden_size)

        marker = Path(str(model)) / "harness_tiny.json"
        self.stand_in: dict | None = json.loads(marker.read_text()) if marker.is_file() else None
        self._special = re.compile(
            "|".join(re.escape(t) for t in sorted(self._special_tokens(), key=len, reverse=True))
        )
        self.tokens = PromptTokens(tokenizer, self.family.prompt_family, self.max_text_tokens,
                                   self._special)
        # one more forward pass is worth this many padding tokens (length_buckets)
        self.bucket_overhead_tokens = int(bucket_overhead_tokens)
        self._image_cache: OrderedDict[str, Any] = OrderedDict()
        self._image_cache_bytes = 0
        self.image_cache_bytes_max = int(image_cache_mb * 2**20)
        self.eval()

    def train(self, mode: bool = True) -> VLMEmbedder:
        """Train mode for LoRA; a frozen module with running statistics (a convolutional
        vision tower's batch norms) stays in eval mode, so an image's features do not depend
        on the batch it came in (they are cached) and its statistics do not drift."""
        super().train(mode)
        if mode:
            for module in self.backbone.modules():
                if (isinstance(module, nn.modules.batchnorm._BatchNorm)
                        and not any(p.requires_grad for p in module.parameters())):
                    module.eval()
        return self

    # ------------------------------------------------------------------ properties & info

    @property
    def dim(self) -> int:
        """Embedding size (the language model's hidden size)."""
        return self._dim

    @property
    def device(self) -> torch.device:
        # one parameter held by reference (``.to()`` moves it in place): walking the module
        # tree for the first parameter cost ~0.2 ms per call, several calls per batch
        return self._anchor.device

    def info(self) -> dict[str, Any]:
        """Provenance of the backbone (results must report ``stand_in``)."""
        n_params = sum(p.numel() for p in self.backbone.parameters())
        return {
            "model": self.model_name,
            "model_type": self.model_type,
            "stand_in": self.stand_in is not None,
            # "random" or "harness-pretrained" (methods.vlm2rec.pretrain); None: a real model
            "stand_in_kind": None if self.stand_in is None else self.stand_in.get("kind", "random"),
            "stand_in_note": None if self.stand_in is None else self.stand_in.get("note"),
            "stand_in_recipe": None if self.stand_in is None else self.stand_in.get("recipe"),
            "n_params": n_params,
            "n_trainable": sum(p.numel() for p in self.trainable_parameters()),
            "dim": self.dim,
            "fusion": self.fusion,
            "lora": self.lora,
            "dtype": self.dtype_name,
            "gradient_checkpointing": self.gradient_checkpointing,
            "history_len": self.history_len,
            "max_text_tokens": self.max_text_tokens,
            "image_size": self.image_size,
            "image_side_px": self.family.side,
        }

    # ------------------------------------------------------------------ LoRA

    @staticmethod
    def _target_regex(hf: nn.Module, targets: str | list[str]) -> str:
        """Regex over the language model's Linear layers named in ``targets`` ("auto": the
        attention and MLP projections present)."""
        decoder = hf.get_decoder()
        prefix = next(name for name, mod in hf.named_modules() if mod is decoder)
        names = {
            n.rsplit(".", 1)[-1] for n, m in decoder.named_modules() if isinstance(m, nn.Linear)
        }
        if targets == "auto":
            wanted = [t for t in LORA_CANDIDATES if t in names]
        else:
            wanted = targets.split(",") if isinstance(targets, str) else list(targets)
            wanted = [t.strip() for t in wanted if t.strip()]
            missing = [t for t in wanted if t not in names]
            if missing:
                raise ValueError(
                    f"LoRA targets {missing} not in the language model: {sorted(names)}"
                )
        if not wanted:
            raise ValueError(f"no LoRA target found in the language model: {sorted(names)}")
        return rf"{re.escape(prefix)}\..*\.({'|'.join(wanted)})"

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The LoRA parameters (empty when ``lora`` is None: the backbone is frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def save_adapter(self, path: str | Path) -> Path:
        """Write the LoRA weights (peft format: adapter_config.json + adapter_model.safetensors)
        and the embedder settings."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        if self._peft is None:
            raise RuntimeError("no LoRA adapter: the embedder was built with lora=None")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(self._peft, save_embedding_layers=False)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state.items()}, path / ADAPTER_WEIGHTS
        )
        self._peft.peft_config["default"].save_pretrained(str(path))
        settings = {k: v for k, v in self.info().items() if k not in ("n_params", "n_trainable")}
        (path / EMBEDDER_CONFIG).write_text(json.dumps(settings, indent=2, default=str) + "\n")
        return path

    def load_adapter(self, path: str | Path) -> None:
        """Load LoRA weights written by ``save_adapter`` (same rank and targets required)."""
        from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
        from safetensors.torch import load_file

        if self._peft is None:
            raise RuntimeError("no LoRA adapter: the embedder was built with lora=None")
        path = Path(path)
        saved, ours = LoraConfig.from_pretrained(str(path)), self._peft.peft_config["default"]
        for key in ("r", "lora_alpha", "target_modules"):
            if getattr(saved, key) != getattr(ours, key):
                raise ValueError(f"adapter {key} {getattr(saved, key)!r} != {getattr(ours, key)!r}")
        state = load_file(str(path / ADAPTER_WEIGHTS), device=str(self.device))
        expected = set(get_peft_model_state_dict(self._peft, save_embedding_layers=False))
        if set(state) != expected:
            raise ValueError(f"adapter keys differ: {sorted(set(state) ^ expected)[:5]}")
        result = set_peft_model_state_dict(self._peft, state)
        if result.unexpected_keys:
            raise ValueError(f"unexpected adapter keys: {result.unexpected_keys[:5]}")

    # ------------------------------------------------------------------ inputs

    def _special_tokens(self) -> set[str]:
        tok = self.tokenizer
        found = set(tok.all_special_tokens)
        found |= {str(t) for t in tok.added_tokens_decoder.values()}
        return {t for t in found if t}

    def _texts(self, raw: list[str | None]) -> list[str | None]:
        """Cleaned texts (whitespace collapsed, special tokens removed, at most
        ``max_text_tokens`` tokens); None where the text is missing or blank."""
        self.tokens.sync()
        return self.tokens.texts(raw)

    def _images(self, images: list[Any]) -> list[Any]:
        """Per-image vision-tower outputs (LRU-cached by ``str(image)``: the tower is frozen);
        None where the image is missing or unreadable (``benchmark.data.dataset.check_image``).
        An image is a file path, or an object with ``open()`` returning an RGB PIL image or
        None (a perturbed image, ``benchmark.encoders.inputs.PerturbedImage``)."""
        cache = self._image_cache
        todo = list(dict.fromkeys(str(p) for p in images if p is not None and str(p) not in cache))
        sources = {str(p): p for p in images if p is not None}
        for s in range(0, len(todo), _VISION_CHUNK):
            keys, loaded = [], []
            for key in todo[s : s + _VISION_CHUNK]:
                image = _open_rgb(sources[key])
                if image is None:
                    self._cache_put(key, None)
                else:
                    keys.append(key)
                    loaded.append(image)
            if not loaded:
                continue
            with torch.no_grad():
                feats = self.family.encode_images(self._core, self.family.preprocess(loaded))
            for key, feat in zip(keys, feats):
                self._cache_put(key, feat)
        out = []
        for p in images:
            if p is None:
                out.append(None)
                continue
            key = str(p)
            if key not in cache:  # evicted by this very call (cache smaller than one batch)
                self._images([p])
            cache.move_to_end(key)
            out.append(cache[key])
        return out

    def _cache_put(self, key: str, payload: Any) -> None:
        cache = self._image_cache
        cache[key] = payload
        self._image_cache_bytes += _nbytes(payload)
        while self._image_cache_bytes > self.image_cache_bytes_max and len(cache) > 1:
            self._image_cache_bytes -= _nbytes(cache.popitem(last=False)[1])

    def clear_image_cache(self) -> None:
        """Drop cached vision-tower outputs (e.g. after changing the backbone's vision weights)."""
        self._image_cache.clear()
        self._image_cache_bytes = 0

    # ------------------------------------------------------------------ encoding

    def _embed(self, rows: list[list[int]], payloads: list[list[Any]]) -> torch.Tensor:
        """(n, d) float32 unit vectors of the last token of each prompt. ``rows``: prompt token
        ids with one image token per image (``self.tokens``), expanded here in id space;
        ``payloads``: each prompt's cached image features. Prompts are grouped by length
        (:func:`length_buckets`), one forward pass per group."""
        expanded = [self._expand(ids, imgs) for ids, imgs in zip(rows, payloads)]
        groups = length_buckets([len(r) for r in expanded], self.bucket_overhead_tokens)
        parts = [self._forward([expanded[i] for i in g], [p for i in g for p in payloads[i]])
                 for g in groups]
        order = torch.tensor([i for g in groups for i in g])
        out = torch.cat(parts) if len(parts) > 1 else parts[0]
        return F.normalize(out[torch.argsort(order).to(out.device)], dim=-1)

    def _expand(self, ids: list[int], imgs: list[Any]) -> list[int]:
        """Each image token replaced by the image's placeholder ids."""
        fam = self.family
        if not imgs:
            if fam.image_token_id in ids:
                raise ValueError("prompt has image tokens but no images")
            return ids
        cuts = [i for i, t in enumerate(ids) if t == fam.image_token_id]
        if len(cuts) != len(imgs):
            raise ValueError(f"prompt has {len(cuts)} image tokens for {len(imgs)} images")
        row, last = [], 0
        for cut, img in zip(cuts, imgs):
            row += ids[last:cut] + fam.image_ids(img)
            last = cut + 1
        return row + ids[last:]

    def _forward(self, rows: list[list[int]], payloads: list[Any]) -> torch.Tensor:
        """One forward pass over expanded prompts, padded on the right: with causal attention
        no real token sees the padding after it, so no attention mask is needed (and SDPA can
        use its causal kernels); the embedding is the hidden state at each prompt's last real
        token. (n, d) float32."""
        n, length = len(rows), max(len(r) for r in rows)
        ids = np.full((n, length), self.tokenizer.pad_token_id, dtype=np.int64)
        valid = np.zeros((n, length), dtype=bool)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = r
            valid[b, : len(r)] = True
        device = self.device
        inputs = self.family.model_inputs(torch.from_numpy(ids), torch.from_numpy(valid),
                                          payloads)
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        with (torch.autocast(device.type, dtype=self._autocast) if self._autocast is not None
              else contextlib.nullcontext()):
            out = self._core(**inputs, use_cache=False, return_dict=True)
        ends = torch.tensor([len(r) - 1 for r in rows], device=device)
        last = out.last_hidden_state[torch.arange(n, device=device), ends].float()
        if not bool(torch.isfinite(last).all()):  # e.g. an attention kernel in half precision
            raise FloatingPointError("non-finite VLM embedding (check dtype / attention kernel)")
        return last

    def _branches(self, n: int, branches: list[tuple[list[int], list[list[int]], list]]
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Embed several branches' prompts together (one bucketed ``_embed``). Each branch is
        (entity rows, prompt ids, payloads); returns per branch the (n, d) embeddings, zeros
        at the rows it does not have, and its presence mask. A branch with no prompt is never
        run through the model."""
        rows = [ids for _, ids, _ in branches for ids in ids]
        emb = self._embed(rows, [p for _, _, pay in branches for p in pay]) if rows else None
        out, k = [], 0
        device = self.device if emb is None else emb.device
        for entities, ids, _ in branches:
            present = torch.zeros(n, dtype=torch.bool)
            present[entities] = True
            full = torch.zeros(n, self.dim, device=device)
            if entities:
                idx = torch.tensor(entities, device=device)
                full = full.index_copy(0, idx, emb[k : k + len(entities)])
                k += len(entities)
            out.append((full, present.to(device)))
        return out

    def _finish(self, n: int, parts: list, external: bool, joint: bool) -> Branches:
        none = (torch.zeros(n, self.dim, device=self.device),
                torch.zeros(n, dtype=torch.bool, device=self.device))
        (t, tp), (v, vp) = parts[:2] if external else (none, none)
        if not joint:
            return Branches(t, tp, v, vp, t + v, tp | vp)
        return Branches(t, tp, v, vp, parts[-1][0], parts[-1][1])

    def encode_items(self, items: list[ItemContent], unimodal: bool = True) -> Branches:
        """Embed items. Under internal fusion ``unimodal=False`` skips the text and image
        branches (returned as zeros, marked absent); external fusion always needs them."""
        n = len(items)
        texts = self._texts([it.text for it in items])
        imgs = self._images([it.image for it in items])
        tok, slot = self.tokens, self.family.slot
        branches = []
        external = self.fusion == "external" or unimodal
        if external:
            rows = [i for i, t in enumerate(texts) if t]
            branches.append((rows, [tok.item_text(texts[i]) for i in rows], [[]] * len(rows)))
            rows = [i for i, p in enumerate(imgs) if p is not None]
            branches.append((rows, [tok.images(0)] * len(rows), [[imgs[i]] for i in rows]))
        joint = self.fusion == "internal"
        if joint:
            rows = [i for i in range(n) if texts[i] or imgs[i] is not None]
            ids = [tok.body(prompts.item_joint(texts[i], imgs[i] is not None, slot))
                   for i in rows]
            branches.append((rows, ids, [[imgs[i]] if imgs[i] is not None else [] for i in rows]))
        return self._finish(n, self._branches(n, branches), external, joint)

    def encode_users(self, histories: list[list[ItemContent]], unimodal: bool = True) -> Branches:
        """Embed users from their histories (the last ``history_len`` items, oldest first): one
        prompt listing the items' texts, one holding their images; ``unimodal`` as for items."""
        n = len(histories)
        hist = [list(h)[-self.history_len :] if self.history_len > 0 else [] for h in histories]
        flat = [it for h in hist for it in h]
        texts_flat = self._texts([it.text for it in flat])
        imgs_flat = self._images([it.image for it in flat])
        texts, imgs, k = [], [], 0
        for h in hist:
            texts.append(texts_flat[k : k + len(h)])
            imgs.append(imgs_flat[k : k + len(h)])
            k += len(h)
        tok, slot = self.tokens, self.family.slot
        branches = []
        external = self.fusion == "external" or unimodal
        if external:
            present_t = [[t for t in ts if t] for ts in texts]
            present_v = [[p for p in ps if p is not None] for ps in imgs]
            rows = [u for u in range(n) if present_t[u]]
            branches.append((rows, [tok.user_text(present_t[u]) for u in rows],
                             [[]] * len(rows)))
            rows = [u for u in range(n) if present_v[u]]
            branches.append((rows, [tok.images(len(present_v[u])) for u in rows],
                             [present_v[u] for u in rows]))
        joint = self.fusion == "internal"
        if joint:
            entries = [
                [(t, p is not None) for t, p in zip(ts, ps) if t or p is not None]
                for ts, ps in zip(texts, imgs)
            ]
            rows = [u for u in range(n) if entries[u]]
            ids = [tok.body(prompts.user_joint(entries[u], slot)) for u in rows]
            branches.append((rows, ids, [[p for p in imgs[u] if p is not None] for u in rows]))
        return self._finish(n, self._branches(n, branches), external, joint)

    def forward(self, items: list[ItemContent]) -> Branches:
        """Same as ``encode_items``."""
        return self.encode_items(items)


def length_buckets(lengths: list[int], overhead: int) -> list[list[int]]:
    """Indices of prompts grouped into forward passes: sorted by length, cut into runs that
    minimise sum over runs of (``overhead`` + rows x longest row), by dynamic programming over
    the distinct lengths. ``overhead``: the cost of one more forward pass in padding tokens
    (0: one pass per distinct length; very large: everything in one pass)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    if not order:
        return []
    sizes = [lengths[i] for i in order]
    ends = [j for j in range(1, len(sizes) + 1) if j == len(sizes) or sizes[j] != sizes[j - 1]]
    best, cut = {0: 0}, {}
    for j in ends:  # a run order[i:j] costs overhead + (j - i) * sizes[j - 1]
        best[j], cut[j] = min((best[i] + overhead + (j - i) * sizes[j - 1], i)
                              for i in [0, *ends] if i < j)
    groups, j = [], len(sizes)
    while j:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def _open_rgb(image: Any) -> Any:
    """An RGB PIL image from a path (None if missing or unreadable) or an ``open()``-able."""
    if not isinstance(image, (str, Path)):
        return image.open()
    from benchmark.encoders.inputs import load_image

    return load_image(Path(image))[0]


def _nbytes(payload: Any) -> int:
    if payload is None:
        return 64
    if torch.is_tensor(payload):
        return payload.numel() * payload.element_size() + 64
    return sum(_nbytes(p) for p in payload)
