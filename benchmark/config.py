"""Suites: models x datasets x seeds x settings, declared in YAML and validated on load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

SUITES_DIR = Path(__file__).parent / "suites"
SUITE_KEYS = {"name", "description", "datasets", "models", "preset", "seeds", "split",
              "evaluation", "params", "model_params", "variants", "tracking_uri"}


@dataclass
class DatasetEntry:
    name: str
    images: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A folder-safe name: a dataset given as a path is labelled by its folder name."""
        return Path(self.name).name + ("+images" if self.images else "")


@dataclass
class Suite:
    name: str
    datasets: list[DatasetEntry]
    models: list[str]
    seeds: list[int]
    preset: str | None = None
    description: str = ""
    split: dict[str, Any] = field(default_factory=lambda: {"kind": "loo"})
    evaluation: dict[str, Any] = field(default_factory=lambda: {"mode": "full"})
    params: dict[str, Any] = field(default_factory=dict)
    model_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Named configurations of a registered model (ablations): name -> {model, params}.
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    tracking_uri: str | None = None

    def spec(self, model: str):
        """The registry entry behind a suite model name (a variant's base model)."""
        from .registry import get_model_spec

        return get_model_spec(self.variants[model]["model"] if model in self.variants else model)

    def model_overrides(self, model: str) -> dict[str, Any]:
        """Suite-wide params that this model has, then the variant's and the model's own params
        (which must all exist)."""
        known = self.spec(model).all_defaults()
        shared = {k: v for k, v in self.params.items() if k in known}
        variant = self.variants.get(model, {}).get("params", {})
        return {**shared, **variant, **self.model_params.get(model, {})}


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8") from None


def load_suite(name_or_path: str) -> Suite:
    """A suite by name (``benchmark/suites/<name>.yaml``) or by path to a YAML file."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = SUITES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown suite {name_or_path!r}; known: {', '.join(list_suites())}")
    raw = _load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a suite must be a mapping")
    return parse_suite(raw, str(path))


def parse_suite(raw: dict, where: str = "suite") -> Suite:
    from .registry import get_model_spec

    unknown = set(raw) - SUITE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    for key in ("name", "datasets", "models", "seeds"):
        if key not in raw:
            raise ConfigError(f"{where}: missing required key {key!r}")
    datasets = []
    for d in raw["datasets"] or []:
        if isinstance(d, str):
            d = {"name": d}
        if not isinstance(d, dict) or "name" not in d:
            raise ConfigError(f"{where}: each dataset needs a name, got {d!r}")
        extra = set(d) - {"name", "images", "options"}
        if extra:
            raise ConfigError(f"{where}: dataset {d['name']!r}: unknown key(s) {sorted(extra)}")
        datasets.append(DatasetEntry(str(d["name"]), d.get("images"), dict(d.get("options") or {})))
    variants = raw.get("variants") or {}
    for name, v in variants.items():
        if not isinstance(v, dict) or "model" not in v or set(v) - {"model", "params"}:
            raise ConfigError(f"{where}: variant {name!r} needs 'model' and optional 'params'")
        get_model_spec(v["model"])
    models = raw["models"]
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{where}: 'models' must be a non-empty list")
    for m in models:
        if m not in variants:
            get_model_spec(m)
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{where}: 'seeds' must be a non-empty list of integers")
    if not datasets:
        raise ConfigError(f"{where}: 'datasets' must be a non-empty list")
    model_params = raw.get("model_params") or {}
    for m in model_params:
        if m not in variants:
            get_model_spec(m)
    evaluation = {"mode": "full", "n_negatives": 100, "ks": [5, 10, 20],
                  **(raw.get("evaluation") or {})}
    if evaluation["mode"] not in ("full", "sampled"):
        raise ConfigError(f"{where}: evaluation.mode must be 'full' or 'sampled'")
    split = {"kind": "loo", **(raw.get("split") or {})}
    suite = Suite(name=str(raw["name"]), datasets=datasets, models=list(models), seeds=seeds,
                  preset=raw.get("preset"), description=raw.get("description", ""), split=split,
                  evaluation=evaluation, params=dict(raw.get("params") or {}),
                  model_params=model_params, variants=dict(variants),
                  tracking_uri=raw.get("tracking_uri"))
    # Fail before any training on a bad parameter: a suite-wide one must exist in some model.
    # Any registered model counts: a suite's params (e.g. its train_candidates rule) also hold
    # when it is run on a subset of its models that lacks them (bench run --models mostpop).
    from .registry import list_models

    accepted = set().union(*(suite.spec(m).all_defaults() for m in suite.models),
                           *(get_model_spec(m).all_defaults() for m in list_models()))
    for key in suite.params:
        if key not in accepted:
            import difflib

            near = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{where}: no model of the suite has a parameter {key!r}{hint}")
    for m in suite.models:
        suite.spec(m).resolve(suite.preset, suite.model_overrides(m))
    return suite
