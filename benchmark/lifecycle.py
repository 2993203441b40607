"""A model's life in the harness, in one place: resolve it by suite name (variants included),
build it on a dataset, train it (its stage first), score and evaluate it, save it, and load a
finished run back. ``bench run``, ``sweep``, ``robustness``, ``diagnose``, the scripts and the
tests all go through these functions; models only implement :mod:`benchmark.contract`.

A run folder (:func:`run_folder`)::

    <results>/<suite>/runs/<dataset>/<model>/seed-<s>/
        config.json        the run's identity (its hash is the run's config_hash) and, under
                           "load", what load_run needs to rebuild it (dataset, split, base model)
        result.json        metrics, training summary, provenance card
        per_case.npz       the rank of every validation and test case
        weights/           the trained model (save_weights)
        stage/             the trained stage model's weights (a model with a stage)
        train_steps.json   per-step training diagnostics (VLM2Rec's loop)
        checkpoint.pt      while training (resumable; removed when the run completes)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contract import capabilities
from .errors import ConfigError
from .io import atomic_write_json, build_dir_once, read_json, stable_hash

log = logging.getLogger(__name__)

WEIGHTS_DIR = "weights"
STAGE_DIR = "stage"
STATE_FILE = "model.safetensors"  # a state-dict model's weights inside a weights folder
STEPS_FILE = "train_steps.json"  # a run's per-step training diagnostics
SHARED_VERSION = 1  # bump when a shared (cached) training changes what it computes


# ------------------------------------------------------------------------------- resolving

def resolve(suite, name: str, overrides: dict | None = None):
    """(registry spec, resolved parameters) of a suite's model name: a registered model or one
    of the suite's variants, under the suite's preset and parameters, then ``overrides``."""
    spec = suite.spec(name)
    return spec, spec.resolve(suite.preset, {**suite.model_overrides(name), **(overrides or {})})


def run_folder(results_dir: Path, suite_name: str, dataset_label: str, model: str,
               seed: int) -> Path:
    return Path(results_dir) / suite_name / "runs" / dataset_label / model / f"seed-{seed}"


def default_cache_dir() -> Path:
    """The embedding and stand-in cache: ``$BENCH_CACHE_DIR`` or ``<data dir>/.cache``."""
    from .data.catalog import default_data_dir

    return Path(os.environ.get("BENCH_CACHE_DIR", default_data_dir() / ".cache"))


def make_evaluator(evaluation: dict, split, n_items: int, params: dict,
                   labels: dict | None = None):
    """The suite's evaluator for a model: the suite's evaluation settings, the model's input
    length and evaluation batch size."""
    from .evaluation import Evaluator

    return Evaluator(split, n_items, params.get("MAX_ITEM_LIST_LENGTH", 50),
                     mode=evaluation.get("mode", "full"),
                     n_negatives=evaluation.get("n_negatives", 100),
                     ks=evaluation.get("ks", (5, 10, 20)),
                     batch_size=params.get("eval_batch_size", 512),
                     candidate_seed=int(evaluation.get("candidate_seed", 0)),
                     case_labels=labels, exclude_history=evaluation.get("exclude_history", True))


def evaluation_settings(evaluator) -> dict:
    """An evaluator's settings as :func:`make_evaluator` reads them (to rebuild one)."""
    return {"mode": evaluator.mode, "n_negatives": evaluator.n_negatives,
            "ks": list(evaluator.ks), "candidate_seed": evaluator.candidate_seed,
            "exclude_history": evaluator.exclude_history}


# -------------------------------------------------------------------------------- building

@dataclass
class ModelHandle:
    """A built model with what the harness knows about it."""

    model: Any
    spec: Any  # the registry entry (a variant's base model)
    params: dict
    seed: int
    device: str
    run_dir: Path
    cache_dir: Path
    data: Any
    split: Any = None  # the split it was built for (None: content-only uses)
    perturbation: dict | None = None
    content: dict = field(default_factory=dict)  # content sources and missing counts (card)
    features: dict = field(default_factory=dict)  # the declared content features it was given
    stage: ModelHandle | None = None  # the trained stage model, once trained or loaded
    outcome: Any = None  # the TrainOutcome of its training (set by train_stage)
    fresh: list[str] = field(default_factory=list)  # keys left untrained by load_run
    evaluation: dict | None = None  # a loaded run's evaluation settings (load_run)
    training_key: str | None = None  # the published training it used (shared training)

    @property
    def caps(self):
        return capabilities(self.model)

    def content_card(self) -> dict:
        """Where the model's content representations come from: encoder names (a harness-
        trained encoder says so), missing-modality counts, and the model's ``provenance()``."""
        card = dict(self.content)
        if self.caps.provenance:
            card.update(self.model.provenance())
        if self.training_key is not None:
            card["training_key"] = self.training_key
        if self.stage is not None:
            card["stage"] = {"model": self.stage.spec.name, **self.stage.content_card()}
        return card


def build_model(spec, params: dict, data, run_dir: Path, seed: int, device: str = "cpu",
                split=None, cache_dir: Path | None = None, progress: bool = False,
                perturbation: dict | None = None) -> ModelHandle:
    """Instantiate a registered model on a dataset: a RecBole ``Config`` with its parameters,
    and the cached content features it declares, computed from inputs under ``perturbation``
    (a spec of :mod:`benchmark.encoders.inputs`) when one is given."""
    from .recbole_compat import DatasetView, recbole_config
    from .training import seed_everything

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    features = {}
    if spec.features:
        from .encoders import prepare_features

        requests = {modality: params[param] for modality, param in spec.features.items()}
        features = prepare_features(data, split, requests, cache_dir, device=device,
                                    progress=progress, seed=seed, perturbation=perturbation)
    cls = spec.load()
    config = recbole_config(cls, data.root, data.name,
                            {**params, "harness_params": params, "seed": seed,
                             "device": device, "cache_dir": str(cache_dir),
                             # a model with a stage reads the stage's resolved parameters
                             "stage_params": spec.stage_params(params),
                             "perturbation": perturbation}, run_dir)
    seed_everything(seed)
    model = cls(config, DatasetView(data, features, split)).to(device)
    content = {m: {"encoder": f.encoder, "missing_items": f.missing_count()}
               for m, f in features.items()}
    return ModelHandle(model, spec, params, seed, device, Path(run_dir), cache_dir, data, split,
                       perturbation, content, features)


def scorer(model, device="cpu"):
    """The evaluator's scoring function (``users, item_seq, item_seq_len -> scores``) of a
    model: its ``full_sort_predict`` on a RecBole ``Interaction`` moved to ``device``."""

    def score(users, seq, lens):
        from recbole.data.interaction import Interaction

        return model.full_sort_predict(Interaction(
            {model.USER_ID: users, model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lens}).to(device))

    return score


# -------------------------------------------------------------------------------- training

def train(handle: ModelHandle, split, evaluator, *, checkpoint: Path | None = None,
          resume: bool = False, progress: bool = False, on_epoch=None, on_step=None):
    """Train a built model as it declares (:mod:`benchmark.contract`): its stage first, then
    the harness Trainer, its own loop, or its statistics. Returns the
    :class:`~benchmark.training.TrainOutcome` (None for a statistics model)."""
    from .training import Trainer

    model, caps = handle.model, handle.caps
    if caps.stage:
        handle.stage = train_stage(handle, split, evaluator, resume=resume, progress=progress,
                                   on_step=on_step)
        model.use_stage(handle.stage.model)
    if caps.training == "statistics":
        model.fit_statistics(split.train_sequences())
        return None
    if caps.shared_training:
        return _shared_training(handle, split, evaluator, checkpoint, resume, progress,
                                on_epoch, on_step)
    if caps.training == "own":
        return model.fit(split, evaluator, seed=handle.seed, checkpoint=checkpoint,
                         resume=resume, progress=progress, on_epoch=on_epoch, on_step=on_step)
    return Trainer(model, handle.params, split, evaluator, handle.seed, handle.device,
                   checkpoint, progress=progress, on_epoch=on_epoch).fit(resume=resume)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def shared_training_folder(handle: ModelHandle, split, evaluator) -> Path:
    """Where a shared training of this identity is published: the model, its parameters and
    backbone identity (``training_identity()``), the seed, the split and the evaluator settings
    that drive early stopping."""
    key = stable_hash({"version": SHARED_VERSION, "model": handle.spec.name,
                       "params": handle.params, "identity": handle.model.training_identity(),
                       "seed": handle.seed, "split": split.checksum,
                       "evaluator": {**evaluation_settings(evaluator),
                                     "max_len": evaluator.max_len}}, length=32)
    return handle.cache_dir / "trained" / handle.spec.name / key


def _shared_training(handle: ModelHandle, split, evaluator, checkpoint, resume, progress,
                     on_epoch, on_step):
    """Train, or reuse the published training of the same identity (replaying its logs to the
    callbacks); a fresh training is published for the next run that needs it."""
    from .training import TrainOutcome

    folder = shared_training_folder(handle, split, evaluator)
    handle.training_key = folder.name
    if (folder / "outcome.json").is_file():
        load_weights(folder, handle.model)
        outcome = TrainOutcome(**read_json(folder / "outcome.json"))
        log.info("%s: reusing the trained model %s", handle.spec.name, folder)
        for row in outcome.steps if on_step else ():
            on_step(row["step"], row)
        for row in outcome.history if on_epoch else ():
            on_epoch(row["epoch"], row)
        handle.model.eval()
        return outcome
    outcome = handle.model.fit(split, evaluator, seed=handle.seed, checkpoint=checkpoint,
                               resume=resume, progress=progress, on_epoch=on_epoch,
                               on_step=on_step)
    if _rank() == 0:
        def publish(tmp: Path) -> None:
            save_weights(tmp, handle.model)
            atomic_write_json(tmp / "outcome.json", vars(outcome))

        build_dir_once(folder, publish, marker="outcome.json")
    return outcome


def stage_handle(handle: ModelHandle, split, stage_dir: Path) -> ModelHandle:
    """The (untrained) stage model of a model whose registry entry names one, built on the
    same data, seed, device and content perturbation."""
    from .registry import get_model_spec

    spec = get_model_spec(handle.spec.stage)
    params = handle.spec.stage_params(handle.params)
    return build_model(spec, params, handle.data, stage_dir, handle.seed, handle.device, split,
                       handle.cache_dir, perturbation=handle.perturbation)


def train_stage(handle: ModelHandle, split, evaluator, *, resume: bool = False,
                progress: bool = False, on_step=None) -> ModelHandle:
    """Train a model's stage (same seed, split and evaluation settings, the stage's own input
    length and batch size), keep its weights in the run folder (``stage/``) and return it."""
    from .training import preserved_rng

    stage_dir = handle.run_dir / STAGE_DIR
    checkpoint = stage_dir / "checkpoint.pt"
    # built (seeded) and trained as a run of its own would be; a cached and a fresh stage
    # leave the caller's random state as it was
    with preserved_rng():
        stage = stage_handle(handle, split, stage_dir)
        stage_eval = make_evaluator(evaluation_settings(evaluator), split, evaluator.n_items,
                                    stage.params, evaluator.case_labels)
        stage.outcome = train(stage, split, stage_eval, checkpoint=checkpoint, resume=resume,
                              progress=progress, on_step=on_step)
    if _rank() == 0:
        save_weights(stage_dir, stage.model)
        if checkpoint.exists():
            checkpoint.unlink()
    return stage


# ----------------------------------------------------------------------------- persistence

def save_weights(folder: Path, model) -> Path:
    """Write a trained model's weights into ``folder``: a peft adapter (Hugging Face format)
    for an adapter model, else its state dict as one safetensors file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if capabilities(model).weights == "adapter":
        model.save_adapter(folder)
        return folder
    from safetensors.torch import save_file

    from .io import atomic_write

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / STATE_FILE, lambda tmp: save_file(state, str(tmp)))
    return folder


def load_weights(folder: Path, model) -> list[str]:
    """Load weights written by :func:`save_weights`; content buffers are not restored (they are
    recomputed from the content the model was built on). Returns the state-dict keys left at
    their initialisation (a parameter created only by perturbed content, with a warning)."""
    folder = Path(folder)
    caps = capabilities(model)
    if caps.weights == "adapter":
        model.load_adapter(folder)
        return []
    from safetensors.torch import load_file

    path = folder / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{folder}: no stored weights ({STATE_FILE})")
    device = next(iter(model.state_dict().values())).device
    state = {k: v for k, v in load_file(str(path), device=str(device)).items()
             if k not in caps.content_buffers}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ConfigError(f"{path}: stored weights do not fit the model (unexpected "
                          f"{unexpected[:3]})")
    fresh = [k for k in missing if k not in caps.content_buffers]
    if fresh:
        log.warning("%s: %s not in the stored weights (created by the perturbed content); "
                    "left at initialisation", path, ", ".join(fresh[:5]))
    return fresh


def save_run(handle: ModelHandle, outcome=None) -> None:
    """A trained run's weights (and per-step diagnostics) into its run folder."""
    save_weights(handle.run_dir / WEIGHTS_DIR, handle.model)
    steps = outcome.steps if outcome is not None else []
    if not steps and handle.stage is not None and handle.stage.outcome is not None:
        steps = handle.stage.outcome.steps  # VLM2Rec-SASRec: its stage's loop
    if steps:  # for diagnose
        atomic_write_json(handle.run_dir / STEPS_FILE, {"steps": steps})


def load_info(entry, split_args: dict, base_model: str) -> dict:
    """What :func:`load_run` needs besides the identity (stored in ``config.json``)."""
    return {"model": base_model, "dataset": {"name": entry.name, "images": entry.images,
                                             "options": entry.options},
            "split": dict(split_args)}


def load_run(run_dir: Path, *, prep=None, data_dir: Path | None = None,
             cache_dir: Path | None = None, device: str = "cpu",
             perturbation: dict | None = None) -> ModelHandle:
    """A finished run rebuilt and loaded, in eval mode: its model (under a content
    ``perturbation`` when given: the trained weights on perturbed inputs), its stage, its
    evaluator settings (``handle.evaluation``) and the untrained keys (``handle.fresh``).
    ``prep`` (a :class:`benchmark.runner.Prepared`) skips reloading the dataset."""
    from .registry import get_model_spec

    run_dir = Path(run_dir)
    if not (run_dir / "result.json").is_file():
        raise ConfigError(f"{run_dir}: not a finished run (no result.json)")
    config = read_json(run_dir / "config.json")
    if "load" not in config:
        raise ConfigError(f"{run_dir}: this run predates load_run; rerun it (bench run, "
                          "without --resume)")
    info = config["load"]
    if prep is None:
        from .config import DatasetEntry
        from .runner import prepare_data

        d = info["dataset"]
        prep = prepare_data(DatasetEntry(d["name"], d["images"], d["options"]), info["split"],
                            data_dir)
    if prep.data.content_hash != config["dataset"] or prep.split.checksum != config["split"]:
        raise ConfigError(f"{run_dir}: the dataset or split differs from the one it was "
                          "trained on")
    spec, params, seed = get_model_spec(info["model"]), config["params"], config["seed"]
    handle = build_model(spec, params, prep.data, run_dir, seed, device, prep.split, cache_dir,
                         perturbation=perturbation)
    if handle.caps.training == "statistics":  # its state is counted from the training split
        handle.model.fit_statistics(prep.split.train_sequences())
    if handle.caps.stage:
        from .training import preserved_rng

        with preserved_rng():
            handle.stage = stage_handle(handle, prep.split, run_dir / STAGE_DIR)
        load_weights(run_dir / STAGE_DIR, handle.stage.model)
        handle.stage.model.eval()
        handle.model.use_stage(handle.stage.model)
    handle.fresh = load_weights(run_dir / WEIGHTS_DIR, handle.model)
    handle.evaluation = config["evaluation"]
    handle.model.eval()
    return handle
