"""Any RecBole ``SequentialRecommender`` by class name: ``recbole:GRU4Rec``, ``recbole:NARM``, ...

The registry (:func:`benchmark.registry.get_model_spec`) builds the model's spec on the fly from
this module: RecBole's own class (``baselines.recbole_generic:<Class>``, resolved here after the
import shims of :mod:`benchmark.recbole_compat`), defaults from RecBole's model yaml, the shared
training defaults, cross-entropy and ``train_mode: prefix`` (RecBole models have only
``calculate_loss``). The model then runs through the harness's data, split, evaluator, tracking
and Trainer like any registered model.

Nothing here imports RecBole until a class is asked for: the list of classes is read from the
package's ``__init__`` and the yaml files from disk, so ``bench list`` stays instant.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from typing import Any

# Classes checked end to end through the harness (tests/test_recbole_generic.py); listed by
# ``bench list models``. BERT4Rec and SHAN (batch transforms) are checked for a training step
# and scores in the same tests. Also measured to build, take a CE training step and score on a tiny
# synthetic dataset: Caser, FOSSIL, GCSAN, HGN, HRM, LightSANs, NPE, NextItNet, RepeatNet, SASRec,
# SINE, SRGNN, STAMP. GRU4RecCPR and SASRecCPR failed there (a top-k larger than the item set).
CHECKED = ("GRU4Rec", "NARM")

# Classes that cannot run on the harness's inputs (user, item sequence, length, next item), and
# why: the error a user gets instead of a stack trace.
UNSUPPORTED = {
    "CORE": "its training needs RecBole's data transform",
    "FEARec": "its contrastive training needs same-target sequences from RecBole's dataset",
    "S3Rec": "it needs a separate pre-training stage on item attributes",
    "DIN": "it is a context-aware click-through model (point-wise labels)",
    "FPMC": "its loss is BPR only: it needs sampled negatives the harness Trainer does not draw",
    "TransRec": "its loss is BPR only: it needs sampled negatives the harness Trainer does not "
                "draw",
    "DIEN": "it is a context-aware click-through model (point-wise labels)",
    **{name: "it reads item feature fields the harness does not load"
       for name in ("FDSA", "GRU4RecF", "SASRecF", "GRU4RecKG", "KSR")},
}

_FLOAT = re.compile(r"^[-+]?(?:\d[\d_]*\.?[\d_]*(?:[eE][-+]?\d+)?|\.\d[\d_]*(?:[eE][-+]?\d+)?)$")


def _recbole_root() -> Path:
    spec = importlib.util.find_spec("recbole")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("recbole is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def sequential_classes() -> tuple[str, ...]:
    """Class names exported by ``recbole.model.sequential_recommender`` (read, not imported)."""
    text = (_recbole_root() / "model" / "sequential_recommender" / "__init__.py").read_text()
    return tuple(sorted(set(re.findall(r"^from \S+ import (\w+)", text, flags=re.MULTILINE))))


def yaml_defaults(name: str) -> dict[str, Any]:
    """RecBole's ``properties/model/<name>.yaml``: its scalar and list settings (floats such as
    ``1e-12`` read as floats, as RecBole's own loader does)."""
    import yaml

    path = _recbole_root() / "properties" / "model" / f"{name}.yaml"
    if not path.is_file():
        return {}
    raw = yaml.safe_load(path.read_text()) or {}

    def fix(v):
        if isinstance(v, str) and _FLOAT.match(v):  # YAML 1.1 reads 1e-12 as a string
            return float(v)
        return [fix(x) for x in v] if isinstance(v, list) else v

    return {k: fix(v) for k, v in raw.items()
            if isinstance(v, (bool, int, float, str, list)) and not isinstance(v, dict)}


def __getattr__(name: str):
    """``baselines.recbole_generic:<Class>`` resolves to RecBole's own class (wrapped when its
    yaml declares a batch ``transform``)."""
    if name.startswith("__") or name not in sequential_classes():
        raise AttributeError(name)
    return _resolve(name)


@functools.cache
def _resolve(name: str):
    from benchmark.recbole_compat import import_recbole

    import_recbole()
    import recbole.model.sequential_recommender as seq

    cls = getattr(seq, name)
    return _with_transform(cls) if yaml_defaults(name).get("transform") else cls


def _with_transform(cls):
    """``cls`` whose batches first go through the transform its yaml declares (BERT4Rec's item
    masking, SHAN's inverted sequence), as RecBole's data loaders do for every batch: the
    harness Trainer and evaluator build plain (user, sequence, length, next item) batches."""

    class Transformed(cls):
        def __init__(self, config, dataset):
            from recbole.data.transform import construct_transform

            # the transform names its fields in the config, which the model's __init__ reads
            self.batch_transform = construct_transform(config)
            self.transform_dataset = dataset  # it reads the item count from dataset.num()
            super().__init__(config, dataset)

        def _transformed(self, interaction):
            return self.batch_transform(self.transform_dataset, interaction)

        def calculate_loss(self, interaction):
            return super().calculate_loss(self._transformed(interaction))

        def predict(self, interaction):
            return super().predict(self._transformed(interaction))

        def full_sort_predict(self, interaction):
            return super().full_sort_predict(self._transformed(interaction))

    Transformed.__name__ = Transformed.__qualname__ = cls.__name__
    Transformed.__doc__ = f"RecBole's {cls.__name__} with its declared batch transform applied."
    return Transformed
