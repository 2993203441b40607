"""The model registry: the one place where a model is added.

Each entry names the class lazily (``module:Class``, imported only when the model is built, so
``bench list`` stays instant), its modalities, default hyper-parameters, presets and the Optuna
search space. Parameters are flat: the shared training parameters below plus the model's own.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import math
import re
from collections.abc import Callable
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
    # "model"; "floor" (a reference scorer, e.g. MostPop) or "control" (built to fail a check,
    # e.g. coldfirst): the world check and tables can tell them from recommenders
    role: str = "model"

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
        """Defaults <- preset <- overrides, each key, value type and value range checked
        (:data:`PARAM_RULES`); a bad value raises a one-line :class:`ConfigError`."""
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
        check_params(self.name, params)
        if self.stage is not None:  # the stage model's settings fail here too, before any work
            try:
                self.stage_params(params)
            except ConfigError as e:
                raise ConfigError(f"model {self.name!r}, stage {self.stage!r} (stage1_preset, "
                                  f"stage1_overrides): {e}") from None
        return params


def _coerce(model: str, key: str, value: Any, default: Any) -> Any:
    """Check a parameter value against the type of its default (ints may stand for floats;
    a float must be finite)."""
    if default is None or value is None:
        return value
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"model {model!r}: parameter {key!r} must be a finite number, "
                              f"got {value!r}")
        return float(value)
    elif kind is int and isinstance(value, int) and not isinstance(value, bool) or isinstance(value, kind):
        return value
    raise ConfigError(f"model {model!r}: parameter {key!r} must be {kind.__name__}, "
                      f"got {value!r}")


# ---------------------------------------------------------------------------------------------
# Parameter rules: the valid values of every parameter, one table keyed by parameter name.
# A new parameter gets its rule here (or from a name pattern below); a numeric parameter without
# one fails tests/test_validation.py, so a model cannot silently accept a negative size.


@dataclass(frozen=True)
class Rule:
    """A parameter's valid values: a numeric range (either end open or closed) or choices."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: ``low`` itself is excluded
    high_open: bool = False
    choices: tuple[Any, ...] | None = None

    def violation(self, value: Any) -> str | None:
        """Why ``value`` breaks the rule (``"must be >= 1"``), or None when it is valid."""
        if self.choices is not None:
            if value in self.choices:
                return None
            return f"must be one of {', '.join(map(str, self.choices))}"
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None  # a type the rule does not speak of (the type check is _coerce's)
        # written so that NaN fails every comparison
        ok_low = self.low is None or (value > self.low if self.low_open else value >= self.low)
        ok_high = self.high is None or (value < self.high if self.high_open else
                                        value <= self.high)
        if ok_low and ok_high:
            return None
        if self.high is None:
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"must be {'<' if self.high_open else '<='} {self.high:g}"
        return (f"must be in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")


def _at_least(low: float) -> Rule:
    return Rule(low=low)


def _above(low: float) -> Rule:
    return Rule(low=low, low_open=True)


def _one_of(*choices: Any) -> Rule:
    return Rule(choices=choices)


_COUNT = _at_least(1)  # sizes, counts, lengths
_PROB = Rule(low=0.0, high=1.0, high_open=True)  # dropouts, masking and sampling shares

PARAM_RULES: dict[str, Rule] = {
    # training (TRAIN_DEFAULTS)
    "epochs": _COUNT, "patience": _at_least(0), "batch_size": _COUNT, "eval_batch_size": _COUNT,
    "learning_rate": _above(0), "weight_decay": _at_least(0),
    "clip_grad_norm": _at_least(0),  # 0 = off
    "train_mode": _one_of(*TRAIN_MODES), "MAX_ITEM_LIST_LENGTH": _COUNT,
    "train_candidates": _one_of("seen", "all"),
    # transformer encoders (RecBole's TransformerEncoder and ours)
    "n_layers": _COUNT, "n_heads": _COUNT, "hidden_size": _COUNT, "inner_size": _COUNT,
    "hidden_dropout_prob": _PROB, "attn_dropout_prob": _PROB, "embedding_dropout_prob": _PROB,
    "hidden_act": _one_of("gelu", "relu", "swish", "tanh", "sigmoid"),  # RecBole's ACT2FN
    "layer_norm_eps": _above(0), "initializer_range": _above(0),
    # UniSRec
    "n_exps": _COUNT,
    "adaptor_dropout_prob": _PROB, "temperature": _above(0), "lambda": _at_least(0),
    "item_drop_ratio": _PROB,
    "pretrain_epochs": _at_least(0),  # 0 = no pre-training
    "pretrain_learning_rate": _at_least(0),  # 0 = learning_rate
    # MMSRec
    "mask_ratio": _PROB, "pretrain_mip_weight": _at_least(0), "pretrain_max_tokens": _COUNT,
    # VLM2Rec
    "lora_r": _at_least(0),  # 0 = no adapter (the trainer then refuses: nothing to train)
    "lora_alpha": _above(0), "lora_dropout": _PROB, "history_len": _COUNT,
    "max_text_tokens": _COUNT, "image_size": _COUNT, "tau": _above(0), "tau_r": _above(0),
    "lambda_w": _at_least(0), "lambda_r": _at_least(0), "gamma": _at_least(0),
    "alpha": _at_least(0), "warmup_ratio": Rule(low=0.0, high=1.0), "grad_accum": _COUNT,
    "pairs_per_user": _at_least(0),  # 0 = every pair
    "grad_probe_every": _at_least(0),  # 0 = off
    # counting baselines: last ``window`` items, weight decay**k, popularity back-off weight
    "window": _COUNT, "decay": Rule(low=0.0, high=1.0, low_open=True), "backoff": _at_least(0),
}

# Where one name means different things in different models: (model, parameter) -> rule
# (``Rule()`` accepts any value: a model whose parameter breaks the general rule on purpose).
MODEL_PARAM_RULES: dict[tuple[str, str], Rule] = {
    ("clip_sasrec", "fusion"): _one_of("concat", "mean"),
    ("clip_sasrec", "modalities"): _one_of("image,text", "text,image", "image", "text"),
    ("vlm2rec", "fusion"): _one_of("external", "internal"),
    ("vlm2rec", "popularity_prior"): _one_of("none", "logq"),
    ("unisrec", "mode"): _one_of("transductive", "inductive"),  # a generic name: UniSRec's here
}

# Parameters in neither table (e.g. a RecBole model's, through a generic entry) by name pattern;
# the first match wins.
PATTERN_RULES: tuple[tuple[re.Pattern, Rule], ...] = tuple(
    (re.compile(p, re.IGNORECASE), r) for p, r in (
        (r"(^|_)(lr|learning_rate)$", _above(0)),
        (r"dropout|_prob$", _PROB),
        (r"_ratio$|_rate$", Rule(low=0.0, high=1.0)),  # a share; 1 may be valid (all of it)
        (r"(^|_)epochs$", _at_least(0)),
        (r"^(n|num)_|_(size|len|length|tokens|layers|heads|num)$", _COUNT),
        (r"(^|_)(step|steps)$", _at_least(0)),  # RecBole DiffRec: sampling_steps 0
        (r"(^|_)(tau|temperature|eps)$", _above(0)),
        (r"(^|_)(weight|decay|lambda|alpha|beta|every|patience)$|^lambda_", _at_least(0)),
    ))

# Rules that tie parameters together: (names, predicate, what must hold).
CROSS_RULES: tuple[tuple[tuple[str, ...], Callable[[dict[str, Any]], bool], str], ...] = (
    (("hidden_size", "n_heads"), lambda p: p["hidden_size"] % p["n_heads"] == 0,
     "hidden_size must be a multiple of n_heads"),  # attention heads split the width
)


def param_rule(model: str, key: str) -> Rule | None:
    """The rule for a model's parameter: the model's exception, the table, else a name pattern
    (None: a free-form parameter, e.g. an encoder name)."""
    rule = MODEL_PARAM_RULES.get((model, key)) or PARAM_RULES.get(key)
    if rule is None:
        rule = next((r for pattern, r in PATTERN_RULES if pattern.search(key)), None)
    return rule


def check_params(model: str, params: dict[str, Any]) -> None:
    """Raise a one-line :class:`ConfigError` on the first parameter outside its rule
    (``model 'sasrec': hidden_size must be >= 1, got -3``)."""
    for key, value in params.items():
        rule = param_rule(model, key)
        why = rule.violation(value) if rule is not None and value is not None else None
        if why is not None:
            raise ConfigError(f"model {model!r}: {key} {why}, got {value!r}")
    for names, holds, what in CROSS_RULES:
        if all(n in params for n in names) and not holds(params):
            got = ", ".join(f"{n}={params[n]!r}" for n in names)
            raise ConfigError(f"model {model!r}: {what}, got {got}")


_MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} registered twice")
    _MODELS[spec.name] = spec
    return spec


RECBOLE_PREFIX = "recbole:"  # recbole:<Class>: any RecBole SequentialRecommender by class name


def get_model_spec(name: str) -> ModelSpec:
    """The spec of a registered model, or of ``recbole:<Class>`` (built on the fly)."""
    if name.startswith(RECBOLE_PREFIX) and name not in _MODELS:
        return recbole_spec(name[len(RECBOLE_PREFIX):])
    if name not in _MODELS:
        near = difflib.get_close_matches(name, _MODELS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"unknown model {name!r}{hint}; known: {', '.join(sorted(_MODELS))}, "
                          f"or {RECBOLE_PREFIX}<Class> for any RecBole sequential model")
    return _MODELS[name]


def list_models(pattern: str = "*") -> list[str]:
    """Registered models and the ``recbole:<Class>`` entries checked end to end."""
    from baselines.recbole_generic import CHECKED

    names = [*_MODELS, *(RECBOLE_PREFIX + c for c in CHECKED)]
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


_RECBOLE_SPACE = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
}


def recbole_spec(cls_name: str) -> ModelSpec:
    """A spec for RecBole's own ``cls_name`` (:mod:`baselines.recbole_generic`): RecBole's
    model yaml for its defaults, CE loss, ``train_mode: prefix``, the shared training defaults,
    a search space over the learning rate, weight decay and the yaml's dropout rates."""
    from baselines.recbole_generic import CHECKED, UNSUPPORTED, sequential_classes, yaml_defaults

    known = sequential_classes()
    if cls_name not in known:
        by_case = {c.lower(): c for c in known}
        near = [by_case[cls_name.lower()]] if cls_name.lower() in by_case else \
            difflib.get_close_matches(cls_name, known, n=1)
        hint = f"did you mean {RECBOLE_PREFIX}{near[0]}? " if near else ""
        raise ConfigError(f"{RECBOLE_PREFIX}{cls_name}: not a RecBole sequential model ({hint}"
                          f"e.g. {', '.join(RECBOLE_PREFIX + c for c in (*CHECKED, 'SASRec'))})")
    if cls_name in UNSUPPORTED:
        raise ConfigError(f"{RECBOLE_PREFIX}{cls_name} cannot run in the harness: "
                          f"{UNSUPPORTED[cls_name]}")
    defaults = {**yaml_defaults(cls_name), "loss_type": "CE", "train_mode": "prefix"}
    dropouts = {k: {"type": "float", "low": 0.0, "high": 0.5} for k, v in defaults.items()
                if "dropout" in k and isinstance(v, float)}
    return ModelSpec(
        name=RECBOLE_PREFIX + cls_name,
        target=f"baselines.recbole_generic:{cls_name}",
        description=f"RecBole's {cls_name}, unchanged (the generic {RECBOLE_PREFIX}<Class> entry: "
                    f"any RecBole sequential model by class name; yaml defaults, CE, prefix).",
        modalities=("id",),
        defaults=defaults,
        presets={"tiny": {"epochs": 30, "patience": 3, "MAX_ITEM_LIST_LENGTH": 20,
                          "batch_size": 128}},
        search_space={**_RECBOLE_SPACE, **dropouts},
    )


# ---------------------------------------------------------------------------------------------
# The models. Search spaces: {"type": "float"|"int"|"categorical", "low", "high", "log", "choices"}

register_model(ModelSpec(
    name="mostpop",
    target="baselines.mostpop:MostPop",
    description="Items ranked by training-split popularity (sanity floor).",
    modalities=(),
    defaults={},
    trainable=False,
    role="floor",
))

register_model(ModelSpec(
    name="random",
    target="baselines.random_scores:RandomScores",
    description="Uniform random scores, seeded by the run seed (the chance floor).",
    modalities=(),
    defaults={},
    trainable=False,
    role="floor",
))

register_model(ModelSpec(
    name="cooc",
    target="baselines.cooc:CoOccurrence",
    description="Counting sequential floor: decayed item-to-item transition shares from the last "
                "items of the history, popularity back-off; training split only.",
    modalities=("id",),
    # backoff 1: transition and popularity shares weigh alike; a large backoff tends to MostPop
    defaults={"window": 3, "decay": 0.5, "backoff": 1.0},
    search_space={
        "window": {"type": "int", "low": 1, "high": 10},
        "decay": {"type": "float", "low": 0.1, "high": 1.0},
        "backoff": {"type": "float", "low": 1e-3, "high": 100.0, "log": True},
    },
    trainable=False,
    role="floor",
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
        "tiny": {"hidden_size": 32, "inner_size": 64, "n_layers": 1, "epochs": 50, "patience": 5,
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
        "tiny": {"hidden_size": 32, "inner_size": 64, "n_layers": 1, "epochs": 50, "patience": 5,
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
        "tiny": {"hidden_size": 32, "inner_size": 64, "n_layers": 1, "epochs": 50, "patience": 5,
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
        "modalities": "image,text",  # "image" or "text": a planted unimodal model
        "use_id": False,
        "train_candidates": "seen",  # CE over the training items only; "all": every item
        "image_encoder": "harness-clip", "text_encoder": "harness-clip",
    },
    presets={
        "tiny": {"hidden_size": 32, "inner_size": 64, "n_layers": 1, "epochs": 50, "patience": 5,
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
    # "logq": rank by cos/tau + log(training count + 1), the Bayes correction of a model trained
    # against in-batch (popularity-sampled) negatives (docs/vlm2rec.md, "Popularity prior");
    # "none": the paper's cosine ranking
    "popularity_prior": "none",
    "warmup_ratio": 0.05, "grad_accum": 1,
    "pairs_per_user": 0,  # 0: every (history, next item) pair of the training split
    "grad_probe_every": 0,  # > 0: per-modality gradient norms every that many steps (§8b)
    "epochs": 3, "patience": 3, "learning_rate": 1e-4, "weight_decay": 0.0,
    "batch_size": 32, "eval_batch_size": 64, "train_mode": "prefix",
}
# The tiny preset's backbone is the harness-pretrained FastVLM stand-in, whose image branch
# reads colour and shape (the harness-clip EfficientNet tower; docs/vlm2rec.md) and whose text
# branch reads brand and product; tau 0.2 was chosen on validation NDCG@10 (seed 0; 0.05:
# 0.0156, 0.1: 0.0150, 0.2: 0.0176): at the paper's 0.05 this small model's fused cosines start
# noisy enough that SFT shrinks every embedding together (in-batch loss -> ln B).
_VLM2REC_TINY = {
    "vlm": "pretrained-tiny-fast-vlm", "tau": 0.2,
    "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
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
        "use_id": False,  # true: + a zero-initialised ID embedding (a hybrid item table)
        "train_candidates": "seen",  # CE over the training items only; "all": every item
    },
    presets={
        "tiny": {"hidden_size": 32, "inner_size": 64, "n_layers": 1, "epochs": 50, "patience": 5,
                 "learning_rate": 2e-3, "MAX_ITEM_LIST_LENGTH": 20, "hidden_dropout_prob": 0.2,
                 "attn_dropout_prob": 0.2, "batch_size": 128, "stage1_preset": "tiny"},
        "paper": {"hidden_size": 64, "inner_size": 256, "n_layers": 2, "epochs": 200,
                  "patience": 10, "MAX_ITEM_LIST_LENGTH": 50, "stage1_preset": "paper"},
    },
    search_space=_SASREC_SPACE,
    stage="vlm2rec",
    raw_content=True,
))

register_model(ModelSpec(
    name="coldfirst",
    target="baselines.controls:ColdFirst",
    description="CONTROL, not a recommender: never-trained items 1, all others 0. At chance on "
                "every cold cell when cold cases measure content, not coldness.",
    modalities=(),
    defaults={},
    trainable=False,
    role="control",
))
