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
# ``bench list models``. Also measured to build, take a CE training step and score on a tiny
# synthetic dataset: Caser, FOSSIL, GCSAN, HGN, HRM, LightSANs, NPE, NextItNet, RepeatNet, SASRec,
# SINE, SRGNN, STAMP. GRU4RecCPR and SASRecCPR failed there (a top-k larger than the item set).
CHECKED = ("GRU4Rec", "NARM")

# Classes that cannot run on the harness's inputs (user, item sequence, length, next item), and
# why: the error a user gets instead of a stack trace.
UNSUPPORTED = {
    "BERT4Rec": "its masked-item training batches come from RecBole's data transform "
                "(MASK_ITEM_SEQ), which the harness Trainer does not build",
    "CORE": "its training needs RecBole's data transform",
    "FEARec": "its contrastive training needs same-target sequences from RecBole's dataset",
    "S3Rec": "it needs a separate pre-training stage on item attributes",
    "DIN": "it is a context-aware click-through model (point-wise labels)",
    "FPMC": "its loss is BPR only: it needs sampled negatives the harness Trainer does not draw",
    "TransRec": "its loss is BPR only: it needs sampled negatives the harness Trainer does not "
                "draw",
    "SHAN": "it reads an inverted item sequence field that only RecBole's dataset builds",
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
    """``baselines.recbole_generic:<Class>`` resolves to RecBole's own class."""
    if name.startswith("__") or name not in sequential_classes():
        raise AttributeError(name)
    from benchmark.recbole_compat import import_recbole

    import_recbole()
    import recbole.model.sequential_recommender as seq

    return getattr(seq, name)
