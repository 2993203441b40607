"""Tiny randomly initialised VLM checkpoints (stand-ins: no pretrained VLM weights exist here).

``build_tiny_checkpoint`` writes a normal Hugging Face checkpoint folder (config + safetensors
weights, a byte-level BPE tokenizer trained offline on the given texts with the family's special
tokens, the image processor config) that ``VLMEmbedder`` loads back only through the standard
``from_pretrained`` path, exactly as it would load a real checkpoint. The folder also holds
``harness_tiny.json`` saying it is a random stand-in: results computed with it must say so.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import prompts

#: Marker file written into every stand-in checkpoint folder.
TINY_MARKER = "harness_tiny.json"

FAMILIES = ("qwen2-vl", "qwen2.5-vl", "smolvlm", "idefics3", "fast-vlm")
SIZES = ("tiny", "small", "2b")

_QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
_FASTVLM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
_SMOLVLM_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<global-img>",
    "<image>",
]

# tiny: 0.1-0.3 M parameters in all (the BPE vocabulary grows with the texts, up to ``vocab``);
# small: ~14 M, environment.md's throughput model (hidden 512, 4 layers, 224 px images).
# 2b: Qwen2-VL-2B's shapes (random weights, for the GPU throughput / memory check); its config
# vocabulary is padded to Qwen's 151,936 rows so that embedding memory and FLOPs are realistic.
_TEXT = {
    "tiny": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "inter": 128, "vocab": 2000},
    "small": {"hidden": 512, "layers": 4, "heads": 8, "kv_heads": 4, "inter": 1376, "vocab": 4000},
    "2b": {"hidden": 1536, "layers": 28, "heads": 12, "kv_heads": 2, "inter": 8960, "vocab": 4000,
           "config_vocab": 151936},
}
_VISION = {
    "tiny": {"hidden": 32, "layers": 1, "heads": 2, "patch": 8, "image": 32, "mlp_ratio": 2},
    "small": {"hidden": 128, "layers": 2, "heads": 4, "patch": 14, "image": 224, "mlp_ratio": 2},
    "2b": {"hidden": 1280, "layers": 32, "heads": 16, "patch": 14, "image": 224, "mlp_ratio": 4},
    # vision towers with room to learn shapes (harness pre-training, methods.vlm2rec.pretrain):
    # "tiny" (one 32-wide layer on 8 px patches) learns colour but not shape
    "tiny-wide": {"hidden": 64, "layers": 2, "heads": 4, "patch": 8, "image": 32, "mlp_ratio": 4},
    "tiny-fine": {"hidden": 64, "layers": 2, "heads": 4, "patch": 4, "image": 32, "mlp_ratio": 4},
    # convolutional towers (family "fast-vlm", whose real tower FastViTHD is a conv hybrid):
    # the small EfficientNet of benchmark.encoders.harness_clip, which learns shapes where the
    # tiny ViTs did not; tokens per image = (image / 2^stages)^2 (16 for tiny, 196 for small)
    "tiny-cnn": {"widths": (32, 64, 128), "depths": (1, 1, 1), "image": 32, "top": 1280},
    "small-cnn": {"widths": (32, 64, 128, 256), "depths": (1, 2, 2, 2), "image": 224,
                  "top": 1280},
}
VISION_SIZES = tuple(_VISION)


def paper_config() -> dict[str, Any]:
    """``VLMEmbedder`` keyword arguments of the paper preset.

    Qwen2.5-VL-3B-Instruct with LoRA r=16, bf16 and gradient checkpointing [summary]; LoRA alpha,
    dropout and targets, history length 10, text budget and image size are [design] choices.
    The weights cannot be downloaded on the harness machines; the code path is the same as for
    the tiny stand-ins.
    """
    return {
        "model": "Qwen/Qwen2.5-VL-3B-Instruct",
        "fusion": "external",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targets": "auto"},
        "history_len": 10,
        "max_text_tokens": 64,
        "image_size": 224,
        "dtype": "bfloat16",
        "gradient_checkpointing": True,
        "trust_remote_code": False,
    }


def is_tiny_checkpoint(path: str | Path) -> bool:
    """True if ``path`` is a local folder holding a stand-in built by this module (random or
    harness-pretrained: see :func:`stand_in_kind`)."""
    return (Path(path) / TINY_MARKER).is_file()


def stand_in_kind(path: str | Path) -> str | None:
    """``"random"`` (built from a config), ``"harness-pretrained"`` (then pre-trained by
    ``methods.vlm2rec.pretrain``) or None (not a stand-in: a real checkpoint)."""
    marker = Path(path) / TINY_MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text()).get("kind", "random")


def _template_corpus() -> list[str]:
    """Prompt words, so the trained tokenizer encodes the templates compactly."""
    bodies = [
        prompts.item_text("x"),
        prompts.item_image(""),
        prompts.user_text(["a", "b"]),
        prompts.user_image(2, ""),
        prompts.item_joint("x", True, ""),
        prompts.user_joint([("a", True)], ""),
    ]
    return bodies + [wrapper.format(body="") for wrapper in prompts.CHAT.values()]


def _train_tokenizer(
    texts: Iterable[str], specials: list[str], vocab_size: int, pad: str, eos: str
):
    """Byte-level BPE trained offline on ``texts``, wrapped as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [t for t in texts if t] + _template_corpus()
    tok.train_from_iterator(corpus, trainer)
    extra = [s for s in specials if s not in (pad, eos)]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=pad, eos_token=eos, extra_special_tokens=extra
    )


def _lm_shape(t: dict, tok) -> dict[str, Any]:
    """The language model's size in a transformers text config (both families)."""
    return {
        "vocab_size": max(len(tok), t.get("config_vocab", 0)),
        "hidden_size": t["hidden"],
        "intermediate_size": t["inter"],
        "num_hidden_layers": t["layers"],
        "num_attention_heads": t["heads"],
        "num_key_value_heads": t["kv_heads"],
    }


def _qwen_config(family: str, size: str, tok, vision: str) -> Any:
    t, v = _TEXT[size], _VISION[vision]
    head_dim = t["hidden"] // t["heads"]
    half, hw = head_dim // 2, 3 * (head_dim // 2) // 8
    mrope = [half - 2 * hw, hw, hw]  # (temporal, height, width) sections sum to head_dim / 2
    ids = {name: tok.convert_tokens_to_ids(name) for name in _QWEN_SPECIALS}
    text = {
        **_lm_shape(t, tok),
        "max_position_embeddings": 8192,
        "rope_parameters": {"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0},
        "pad_token_id": ids["<|endoftext|>"],
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "tie_word_embeddings": True,
    }
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": True,
    }
    if family == "qwen2-vl":
        from transformers import Qwen2VLConfig

        vision = {
            "depth": v["layers"],
            "embed_dim": v["hidden"],
            "hidden_size": t["hidden"],
            "num_heads": v["heads"],
            "mlp_ratio": v["mlp_ratio"],
            "patch_size": v["patch"],
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }
        return Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
    from transformers import Qwen2_5_VLConfig

    vision = {
        "depth": v["layers"] + 1,
        "hidden_size": v["hidden"],
        "intermediate_size": 2 * v["hidden"],
        "num_heads": v["heads"],
        "out_hidden_size": t["hidden"],
        "patch_size": v["patch"],
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 4 * v["patch"],  # two merged patches per window side
        "fullatt_block_indexes": [v["layers"]],
    }
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)


def _fastvlm_config(size: str, tok, vision: str) -> Any:
    """FastVLM's layout (LLaVA-style: vision tower, two-layer projector, Qwen2 language model)
    with a convolutional vision tower read as a (C, H, W) feature map, one token per cell."""
    from transformers import FastVlmConfig

    from benchmark.encoders.harness_clip import efficientnet_config

    t, v = _TEXT[size], _VISION[vision]
    ids = {name: tok.convert_tokens_to_ids(name) for name in _FASTVLM_SPECIALS}
    text = {
        "model_type": "qwen2",
        **_lm_shape(t, tok),
        "max_position_embeddings": 8192,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "pad_token_id": ids["<|endoftext|>"],
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "tie_word_embeddings": True,
    }
    vision_config = efficientnet_config(v["widths"], v["depths"], v["image"], v["top"])
    side = v["image"] // 2 ** len(v["widths"])
    return FastVlmConfig(text_config=text, vision_config=vision_config,
                         image_token_id=ids["<image>"], image_seq_length=side * side,
                         tie_word_embeddings=True)


def _smolvlm_config(family: str, size: str, tok, vision: str) -> Any:
    from transformers import Idefics3Config, SmolVLMConfig

    t, v = _TEXT[size], _VISION[vision]
    text = {
        "model_type": "llama",
        **_lm_shape(t, tok),
        "max_position_embeddings": 8192,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "pad_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        "bos_token_id": tok.convert_tokens_to_ids("<|im_start|>"),
        "eos_token_id": tok.convert_tokens_to_ids("<end_of_utterance>"),
        "tie_word_embeddings": True,
    }
    vision = {
        "hidden_size": v["hidden"],
        "intermediate_size": 2 * v["hidden"],
        "num_hidden_layers": v["layers"],
        "num_attention_heads": v["heads"],
        "image_size": v["image"],
        "patch_size": v["patch"],
    }
    config_class = SmolVLMConfig if family == "smolvlm" else Idefics3Config
    return config_class(
        text_config=text,
        vision_config=vision,
        scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        tie_word_embeddings=True,
    )


def build_tiny_checkpoint(
    family: str, out_dir: Path, texts: list[str], seed: int = 0, size: str = "tiny",
    vision: str | None = None, weights: bool = True,
) -> Path:
    """Build, save and return a random-weight ``family`` checkpoint folder at ``out_dir``.

    ``family``: "qwen2-vl", "qwen2.5-vl", "smolvlm", "idefics3" (SmolVLM's layout with the
    Idefics3 classes) or "fast-vlm" (FastVLM's classes with a small EfficientNet tower);
    ``size``: "tiny" (0.1-0.3 M parameters depending on the vocabulary, 8 px
    patches, 32 px images: 4 LM tokens per image) or "small" (~14 M, 14 px patches, 224 px).
    ``vision``: the vision tower's size if not ``size``'s (``VISION_SIZES``; e.g. "tiny-wide").
    ``weights`` False: config, tokenizer and image processor only (load it with
    ``VLMEmbedder(..., random_weights=True)``; building and saving 2b weights takes minutes).
    """
    import torch

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; expected one of {FAMILIES}")
    if size not in SIZES:
        raise ValueError(f"unknown tiny size {size!r}; expected one of {SIZES}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    conv = family == "fast-vlm"
    vision = (f"{size}-cnn" if conv else size) if vision is None else vision
    if vision not in _VISION:
        raise ValueError(f"unknown vision size {vision!r}; expected one of {VISION_SIZES}")
    if conv != ("widths" in _VISION[vision]):
        raise ValueError(f"vision {vision!r} does not fit family {family!r}: fast-vlm takes a "
                         "convolutional tower (*-cnn), the other families a ViT")
    vocab = _TEXT[size]["vocab"]
    v = _VISION[vision]
    if conv:
        from transformers import CLIPImageProcessorPil

        tok = _train_tokenizer(texts, _FASTVLM_SPECIALS, vocab, "<|endoftext|>", "<|im_end|>")
        config = _fastvlm_config(size, tok, vision)
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": v["image"]},
            crop_size={"height": v["image"], "width": v["image"]},
        )
    elif family.startswith("qwen"):
        from transformers import Qwen2VLImageProcessorPil

        tok = _train_tokenizer(texts, _QWEN_SPECIALS, vocab, "<|endoftext|>", "<|im_end|>")
        config = _qwen_config(family, size, tok, vision)
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=v["patch"],
            merge_size=2,
            temporal_patch_size=2,
            min_pixels=(2 * v["patch"]) ** 2,
            max_pixels=max(v["image"], 64) ** 2,
        )
    else:
        from transformers import Idefics3ImageProcessorPil, SmolVLMImageProcessorPil

        tok = _train_tokenizer(
            texts, _SMOLVLM_SPECIALS, vocab, "<|endoftext|>", "<end_of_utterance>"
        )
        config = _smolvlm_config(family, size, tok, vision)
        processor_class = (
            SmolVLMImageProcessorPil if family == "smolvlm" else Idefics3ImageProcessorPil
        )
        image_processor = processor_class(
            do_image_splitting=False,
            size={"longest_edge": v["image"]},
            max_image_size={"longest_edge": v["image"]},
        )
    from transformers import AutoModelForImageTextToText

    n_params = None
    if weights:
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
            torch.manual_seed(seed)
            model = AutoModelForImageTextToText.from_config(config)
        if conv:
            from benchmark.encoders.harness_clip import reset_batch_norms

            reset_batch_norms(model)
        model.save_pretrained(out_dir)
        n_params = sum(p.numel() for p in model.parameters())
    else:
        config.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    marker = {
        "stand_in": True,
        "kind": "random",  # "harness-pretrained" once methods.vlm2rec.pretrain has trained it
        "pretrained": False,
        "note": "Randomly initialised stand-in built by methods.vlm2rec.tiny from a config; NOT "
        "pretrained weights. Results computed with it exercise the code path only and say "
        "nothing about the real model.",
        "family": family,
        "size": size,
        "vision": vision,
        "seed": seed,
        "n_params": n_params,  # None: no weights saved (random at load)
        "model_type": config.model_type,
        "n_tokenizer_texts": len(texts),
    }
    (out_dir / TINY_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return out_dir
