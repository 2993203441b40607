"""The model contract: what every model the harness runs must offer, and the optional
capabilities a model *declares* (the harness never probes for them).

Required of every model (RecBole's ``SequentialRecommender`` interface):

- ``cls(config, dataset)``: ``config`` a RecBole ``Config`` holding the model's resolved registry
  parameters (also as one dict, ``config["harness_params"]``), ``seed``, ``device``,
  ``cache_dir`` and ``perturbation``; ``dataset`` a :class:`benchmark.recbole_compat.DatasetView`
  (the harness dataset as ``dataset.data`` and the content features the model's registry entry
  asked for as ``dataset.item_features``);
- ``full_sort_predict(interaction) -> (batch, n_items)`` scores; column 0 is padding. The
  harness, not the model, excludes history items and breaks ties (:mod:`benchmark.evaluation`).

What else the harness may ask of a model is declared in its class attribute ``HARNESS``, a
:class:`Capabilities`. A model without one (e.g. any RecBole model run as ``recbole:<Class>``)
gets :data:`DEFAULT`: trained by the harness :class:`~benchmark.training.Trainer` through
``calculate_loss`` in RecBole's ``prefix`` mode, its weights saved as its state dict.
docs/adding-a-model.md explains each capability and what it unlocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

TRAINING = ("trainer", "own", "statistics")
WEIGHTS = ("state_dict", "adapter")


@runtime_checkable
class SequentialModel(Protocol):
    """The required surface (typing aid; every RecBole ``SequentialRecommender`` has it)."""

    USER_ID: str
    ITEM_SEQ: str
    ITEM_SEQ_LEN: str

    def full_sort_predict(self, interaction): ...


@dataclass(frozen=True)
class Capabilities:
    """What a model declares it can do; each field names the method it promises."""

    #: how it learns: ``"trainer"`` (the harness Trainer calls ``calculate_loss`` on prefix
    #: batches, or ``all_positions_loss``), ``"own"`` (``fit(split, evaluator, *, seed,
    #: checkpoint, resume, progress, on_epoch, on_step) -> TrainOutcome``: its own loop, e.g.
    #: VLM2Rec's contrastive SFT) or ``"statistics"`` (``fit_statistics(train_sequences)``:
    #: counting models, nothing to optimise).
    training: str = "trainer"
    #: ``all_positions_loss(item_seq, targets)``: allows ``train_mode: all_positions``.
    all_positions: bool = False
    #: ``pretrain_loss(item_seq, targets)``: a self-supervised stage when ``pretrain_epochs`` > 0.
    pretrain: bool = False
    #: ``set_train_split(split)`` before the first step (``train_candidates: seen``).
    train_split: bool = False
    #: how its trained weights are stored: ``"state_dict"`` (one safetensors file) or
    #: ``"adapter"`` (``save_adapter(folder)`` / ``load_adapter(folder)``: Hugging Face peft
    #: format, the frozen backbone is not copied).
    weights: str = "state_dict"
    #: state-dict entries computed from content (recomputed when loading, never restored: under
    #: a perturbation the stored clean values would be wrong).
    content_buffers: tuple[str, ...] = ()
    #: ``item_table() -> (n_items, d)``: the table it scores with (diagnostics).
    item_table: bool = False
    #: ``modality_tables() -> {modality: ModalityFeatures}``: its own unimodal item tables, for a
    #: model that reads raw content instead of declared features (diagnostics).
    modality_tables: bool = False
    #: ``set_input_modalities(modalities)``: score with only some modalities fed in.
    input_modalities: bool = False
    #: ``provenance() -> dict``: where its content representations come from (the card).
    provenance: bool = False
    #: ``use_stage(stage_model)``: receives the trained model of its registry entry's ``stage``
    #: (trained by the harness first) before training and after loading.
    stage: bool = False
    #: its training is published in the cache and reused by any run with the same identity
    #: (a stage that several models share, e.g. VLM2Rec's).
    shared_training: bool = False

    def __post_init__(self) -> None:
        if self.training not in TRAINING:
            raise ValueError(f"training must be one of {TRAINING}, got {self.training!r}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {self.weights!r}")


DEFAULT = Capabilities()


def capabilities(model_or_cls) -> Capabilities:
    """The declared capabilities of a model (instance or class); :data:`DEFAULT` if none."""
    cls = model_or_cls if isinstance(model_or_cls, type) else type(model_or_cls)
    return getattr(cls, "HARNESS", DEFAULT)  # declarations are inherited

