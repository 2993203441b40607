"""The model registry: the one place where a model is added.

Each entry names the class lazily (``module:Class``, imported only when the model is built, so
``bench list`` stays instant), its modalities, default hyper-parameters, presets and the Optuna
search space. Parameters are flat: the shared training parameters below plus the model's own.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

# Training parameters every trainable model accepts (the trainer reads them).
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 50,
    "patience": 5,  # epochs without a better validation NDCG@10 before stopping
    "batch_size": 256,
    "eval_batch_size": 512,
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "clip_grad_norm": 0.0,  # 0 = off
    "train_mode": "all_positions",  # or "prefix" (RecBole's augmentation)
    "MAX_ITEM_LIST_LENGTH": 50,
}
TRAIN_MODES = ("prefix", "all_positions")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    target: str  # "package.module:Class"
    description: str
    modalities: tuple[str, ...]  # subset of ("id", "text", "image")
    defaults: dict[str, Any]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    search_space: dict[str, dict[str, Any]] = field(default_factory=dict)
    trainable: bool = True
    # Content the model reads: modality ("text", "image") -> parameter naming its encoder.
    features: dict[str, str] = field(default_factory=dict)
    # True: the model reads its raw texts/images itself (not through ``features``) and applies
    # the input perturbation it is given as ``config["perturbation"]`` (VLM2Rec).
    raw_content: bool = False
    # A registered model this one trains first, configured by this model's ``stage1_preset``
    # and ``stage1_overrides`` (vlm2rec_sasrec: the vlm2rec stage); part of a run's identity.
    stage: str | None = None

    def load(self):
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)

    def all_defaults(self) -> dict[str, Any]:
        return {**TRAIN_DEFAULTS, **self.defaults} if self.trainable else dict(self.defaults)

    def stage_params(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """The resolved parameters of the stage model (None without one)."""
        if self.stage is None:
            return None
        return get_model_spec(self.stage).resolve(params["stage1_preset"] or None,
                                                  params["stage1_overrides"] or {})

    def resolve(self, preset: str | None = None, overrides: dict | None = None) -> dict[str, Any]:
        """Defaults <- preset <- overrides, each key and value type checked."""
        params = self.all_defaults()
        if preset is not None and self.presets:  # a model without presets has nothing to scale
            if preset not in self.presets:
                raise ConfigError(f"model {self.name!r} has no preset {preset!r} "
                                  f"(presets: {', '.join(self.presets)})")
            params.update(self.presets[preset])
        for key, value in (overrides or {}).items():
            if key not in params:
                near = difflib.get_close_matches(key, params, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ConfigError(f"model {self.name!r} has no parameter {key!r}{hint}")
            params[key] = _coerce(self.name, key, value, params[key])
        if self.trainable and params["train_mode"] not in TRAIN_MODES:
            raise ConfigError(f"train_mode must be one of {', '.join(TRAIN_MODES)}, "
                              f"got {params['train_mode']!r}")
        if params.get("train_candidates", "all") not in ("seen", "all"):  # before any work
            raise ConfigError(f"{self.name}: train_candidates must be one of seen, all, got "
                              f"{params['train_candidates']!r}")
        for key in ("epochs", "batch_size", "eval_batch_size", "MAX_ITEM_LIST_LENGTH"):
            if key in params and params[key] < 1:
                raise ConfigError(f"{self.name}: {key} must be >= 1, got {params[key]}")
        return params


def _coerce(model: str, key: str, value: Any, default: Any) -> Any:
    """Check a parameter value against the type of its default (ints may stand for floats)."""
    if default is None or value is None:
        return value
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif kind is int and isinstance(value, int) and not isinstance(value, bool) or isinstance(value, kind):
        return value
    raise ConfigError(f"model {model!r}: parameter {key!r} must be {kind.__name__}, "
                      f"got {value!r}")


_MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} registered twice")
    _MODELS[spec.name] = spec
    return spec


def get_model_spec(name: str) -> ModelSpec:
    if name not in _MODELS:
        near = difflib.get_close_matches(name, _MODELS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"unknown model {name!r}{hint}; known: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


# ---------------------------------------------------------------------------------------------
# The models. Search spaces: {"type": "float"|"int"|"categorical", "low", "high", "log", "choices"}

register_model(ModelSpec(
    name="mostpop",
    target="baselines.mostpop:MostPop",
    description="Items ranked by training-split popularity (sanity floor).",
    modalities=(),
    defaults={},
    trainable=False,
))

# RecBole SASRec's transformer defaults, shared by every SASRec-style model.
_SASREC_TRANSFORMER = {
    "n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256,
    "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": "gelu",
    "layer_norm_eps": 1e-12, "initializer_range": 0.02,
}

_SASREC_SPACE = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "hidden_dropout_prob": {"type": "float", "low": 0.0, "high": 0.5},
    "attn_dropout_prob": {"type": "float", "low": 0.0, "high": 0.5},
    "n_layers": {"type": "int", "low": 1, "high": 3},
    "hidden_size": {"type": "categorical", "choices": [32, 64, 128]},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
}

register_model(ModelSpec(
    name="sasrec",
    target="baselines.sasrec:SASRec",
    description="SASRec (Kang & McAuley 2018), RecBole's implementation; ID-only.",
    modalities=("id",),
    defaults={
        **_SASREC_TRANSFORMER,
        "train_candidates": "all",  # RecBole's CE over every item ("seen": training items only)
    },
    presets={
        "tiny": {"hidden_size": 32, "inner_size": 64, "n_layers": 1, "epochs": 30, "patience": 3,
                 "learning_rate": 2e-3,
                 "MAX_ITEM_LIST_LENGTH": 20, "hidden_dropout_prob": 0.2,
                 "attn_dropout_prob": 0.2, "batch_size": 128},
        "paper": {"hidden_size": 64, "inner_size": 256, "n_layers": 2, "epochs": 200,
                  "patience": 10, "MAX_ITEM_LIST_LENGTH": 50},
    },
    search_space=_SASREC_SPACE,
))

_UNISREC_SPACE = {
    **_SASREC_SPACE,
    "adaptor_dropout_prob": {"type": "float", "low": 0.0, "high": 0.5},
    "hidden_size": {"type": "categorical", "choices": [32, 64, 128, 300]},
}

register_model(ModelSpec(
    name="unisrec",
    target="baselines.unisrec:UniSRec",
    description="UniSRec (Hou et al. 2022): frozen text embeddings, MoE whitening adaptor, "
                "SASRec encoder, cosine scores; inductive or transductive (+ID).",
    modalities=("text", "id"),
    defaults={  # the official props/UniSRec.yaml (transductive fine-tuning)
        "mode": "transductive",  # or "inductive" (text only, no ID embedding)
        "n_layers": 2, "n_heads": 2, "hidden_size": 300, "inner_size": 256,
        "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": "gelu",
        "layer_norm_eps": 1e-12, "initializer_range": 0.02,
        "n_exps": 8, "adaptor_dropout_prob": 0.2, "gating_noise": True, "temperature": 0.07,
        "lambda": 1e-3, "item_drop_ratio": 0.2,  # pre-training: seq-seq weight, augmentation
        "pretrain_epochs": 0, "pretrain_learning_rate": 0.0,  # 0.0 = learning_rate
        "freeze_encoder": False,  # after pre-training, fine-tune only adaptor (+ ID embedding)
        # training softmax over the items of the training split only (cold items are not pushed
        # down); "all" = every item, as the official code (baselines/candidates.py)
        "train_candidates": "seen",
        "text_encoder": "all-MiniLM-L6-v2",
    },
    presets={
        "tiny": {"hidden_size": 32, "inner_size": 64, "n_layers": 1, "epochs": 30, "patience": 3,
                 "learning_rate": 2e-3, "MAX_ITEM_LIST_LENGTH": 20, "hidden_dropout_prob": 0.2,
                 "attn_dropout_prob": 0.2, "batch_size": 128},
        "paper": {"hidden_size": 300, "inner_size": 256, "n_layers": 2, "n_heads": 2,
                  "MAX_ITEM_LIST_LENGTH": 50, "temperature": 0.07, "learning_rate": 1e-3,
                  "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5,
                  "adaptor_dropout_prob": 0.2, "n_exps": 8, "epochs": 300, "patience": 10,
                  "batch_size": 2048, "eval_batch_size": 2048, "train_mode": "prefix"},
    },
    search_space=_UNISREC_SPACE,
    features={"text": "text_encoder"},
))

_MMSREC_SPACE = {
    **_SASREC_SPACE,
    "temperature": {"type": "float", "low": 0.02, "high": 0.2, "log": True},
    "mask_ratio": {"type": "float", "low": 0.0, "high": 0.4},
}

register_model(ModelSpec(
    name="mmsrec",
    target="baselines.mmsrec:MMSRec",
    description="MMSRec (Song et al. 2023): image/text tokens of frozen CLIP features fused by a "
                "transformer; dual-tower retrieval; combinatorial contrastive pre-training.",
    modalities=("image", "text"),
    defaults={  # architecture and losses of the official finetune_amazon.yaml, smaller width
        "n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256,
        "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "embedding_dropout_prob": 0.2,
        "hidden_act": "gelu", "layer_norm_eps": 1e-5, "initializer_range": 0.02,
        "temperature": 0.05, "mask_ratio": 0.2, "MAX_ITEM_LIST_LENGTH": 20,
        "clip_grad_norm": 1.0, "train_mode": "prefix",  # the official training set: all prefixes
        "pretrain_epochs": 0, "pretrain_learning_rate": 0.0,  # 0.0 = learning_rate
        "pretrain_mip_weight": 1.0,  # 0 = the official pre-training (contrastive only)
        "pretrain_max_tokens": 4096,  # items per contrastive similarity matrix (memory bound)
        "train_candidates": "seen",  # masked-item CE over the training items; "all": official
        "image_encoder": "harness-clip", "text_encoder": "harness-clip",
    },
    presets={
        # prefix mode encodes every prefix: a short window and large batches keep it fast
        "tiny": {"hidden_size": 32, "inner_size": 64, "n_layers": 1, "epochs": 30, "patience": 3,
                 "MAX_ITEM_LIST_LENGTH": 8, "hidden_dropout_prob": 0.2,
                 "attn_dropout_prob": 0.2, "embedding_dropout_prob": 0.1, "batch_size": 512,
                 "pretrain_epochs": 1, "pretrain_max_tokens": 1024},
        "paper": {"hidden_size": 512, "n_heads": 8, "inner_size": 1024, "n_layers": 2,
                  "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5,
                  "embedding_dropout_prob": 0.2, "temperature": 0.05, "mask_ratio": 0.2,
                  "MAX_ITEM_LIST_LENGTH": 20, "learning_rate": 1e-3, "batch_size": 1024,
                  "epochs": 500, "patience": 10, "clip_grad_norm": 1.0,
                  "pretrain_epochs": 50, "pretrain_learning_rate": 5e-5},
    },
    search_space=_MMSREC_SPACE,
    features={"image": "image_encoder", "text": "text_encoder"},
))

register_model(ModelSpec(
    name="clip_sasrec",
    target="baselines.clip_sasrec:CLIPSASRec",
    description="Frozen CLIP image+text item embeddings, linear projection, SASRec; no ID "
                "embedding unless use_id.",
    modalities=("image", "text"),
    defaults={
        **_SASREC_TRANSFORMER,
        "fusion": "concat",  # or "mean" (one CLIP space: image and text of the same size)
        "use_id": False,
        "train_candidates": "seen",  # CE over the training items only; "all": every item
        "image_encoder": "harness-clip", "text_encoder": "harness-clip",
    },
    presets={
        "tiny": {"hidden_size": 32, "inner_size": 64, "n_layers": 1, "epochs": 30, "patience": 3,
                 "MAX_ITEM_LIST_LENGTH": 20, "hidden_dropout_prob": 0.2,
                 "attn_dropout_prob": 0.2, "batch_size": 128},
        "paper": {"hidden_size": 64, "inner_size": 256, "n_layers": 2, "epochs": 200,
                  "patience": 10, "MAX_ITEM_LIST_LENGTH": 50},
    },
    search_space={**_SASREC_SPACE,
                  "fusion": {"type": "categorical", "choices": ["concat", "mean"]}},
    features={"image": "image_encoder", "text": "text_encoder"},
))

# VLM2Rec (docs/vlm2rec.md): the method under study. Defaults are the paper's settings.
_VLM2REC_DEFAULTS = {
    "vlm": "Qwen/Qwen2.5-VL-3B-Instruct",  # hub name, local folder, or tiny-/small-<family>
    "fusion": "external",  # or "internal" (both modalities in one prompt; the paper's ablation)
    "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_targets": "auto",
    "history_len": 10, "max_text_tokens": 64, "image_size": 224,
    "bf16": True,  # bf16 weights + autocast, on a CUDA device that supports it only
    "gradient_checkpointing": True,
    "tau": 0.05, "lambda_w": 1.0, "lambda_r": 0.1, "gamma": 1.0, "alpha": 1.0, "tau_r": 0.1,
    "wpcl": True, "crtr": True,  # the ablations: both False = plain contrastive SFT
    "warmup_ratio": 0.05, "grad_accum": 1,
    "pairs_per_user": 0,  # 0: every (history, next item) pair of the training split
    "grad_probe_every": 0,  # > 0: per-modality gradient norms every that many steps (§8b)
    "epochs": 3, "patience": 3, "learning_rate": 1e-4, "weight_decay": 0.0,
    "batch_size": 32, "eval_batch_size": 64, "train_mode": "prefix",
}
_VLM2REC_TINY = {
    "vlm": "tiny-qwen2-vl", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
    "history_len": 5, "image_size": 32, "max_text_tokens": 16, "bf16": False,
    "gradient_checkpointing": False, "epochs": 1, "patience": 1, "learning_rate": 2e-3,
    "batch_size": 64, "eval_batch_size": 256, "pairs_per_user": 1, "MAX_ITEM_LIST_LENGTH": 20,
    "grad_probe_every": 2,  # the per-modality gradient series of the diagnostics (cheap here)
}
_VLM2REC_PAPER = {
    "vlm": "Qwen/Qwen2.5-VL-3B-Instruct", "lora_r": 16, "lora_alpha": 32, "bf16": True,
    "gradient_checkpointing": True, "epochs": 3, "learning_rate": 1e-4, "tau": 0.05,
    "history_len": 10,
}
_VLM2REC_SPACE = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "tau": {"type": "float", "low": 0.02, "high": 0.2, "log": True},
    "lambda_w": {"type": "float", "low": 0.0, "high": 2.0},
    # up to 2: on the pretrained stand-in |grad L_CRTR| ~ 0.7 |grad L_CL|, so parity is ~1.5
    "lambda_r": {"type": "float", "low": 0.0, "high": 2.0},
    "gamma": {"type": "float", "low": 0.0, "high": 2.0},
    "alpha": {"type": "float", "low": 0.1, "high": 5.0, "log": True},
    "tau_r": {"type": "float", "low": 0.05, "high": 0.5, "log": True},
    "lora_r": {"type": "categorical", "choices": [8, 16, 32]},
}

register_model(ModelSpec(
    name="vlm2rec",
    target="methods.vlm2rec.model:VLM2Rec",
    description="VLM2Rec: LoRA-tuned VLM embedder, contrastive SFT + WPCL + CRTR; "
                "score = cos(user, item) (direct ranking).",
    modalities=("text", "image"),
    defaults=_VLM2REC_DEFAULTS,
    presets={"tiny": _VLM2REC_TINY, "paper": _VLM2REC_PAPER},
    search_space=_VLM2REC_SPACE,
    raw_content=True,
))

register_model(ModelSpec(
    name="vlm2rec_sasrec",
    target="methods.vlm2rec.model:VLM2RecSASRec",
    description="SASRec over the frozen item table of a trained VLM2Rec through a 2-layer MLP "
                "adapter (SR initialisation, LLMEmb-style).",
    modalities=("text", "image"),
    defaults={
        **_SASREC_TRANSFORMER,
        # the VLM2Rec stage: the vlm2rec model under this preset ("" = its defaults) and
        # overrides, trained once per (config, seed, dataset, split) and shared through the cache
        "stage1_preset": "", "stage1_overrides": {},
        "train_candidates": "seen",  # CE over the training items only; "all": every item
    },
    presets={
        "tiny": {"hidden_size": 32, "inner_size": 64, "n_layers": 1, "epochs": 30, "patience": 3,
                 "learning_rate": 2e-3, "MAX_ITEM_LIST_LENGTH": 20, "hidden_dropout_prob": 0.2,
                 "attn_dropout_prob": 0.2, "batch_size": 128, "stage1_preset": "tiny"},
        "paper": {"hidden_size": 64, "inner_size": 256, "n_layers": 2, "epochs": 200,
                  "patience": 10, "MAX_ITEM_LIST_LENGTH": 50, "stage1_preset": "paper"},
    },
    search_space=_SASREC_SPACE,
    stage="vlm2rec",
    raw_content=True,
))
