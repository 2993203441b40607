"""Stored results of a suite, as the report reads them (never written here).

Required: ``<suite_dir>/summary.json`` (rows written by :mod:`benchmark.runner`) and, per run,
``result.json`` (provenance card, training history) and ``per_case.npz`` (ranks and ties of every case).
Optional, produced by other commands (formats in ``docs/reports.md``):
``<suite_dir>/robustness.json``, ``<suite_dir>/diagnostics.json`` and
``<results>/<suite>-sweep/sweep.json`` (or ``<suite_dir>/sweep.json``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..evaluation import case_metrics, stored_cases
from ..io import read_json

METRIC_RE = re.compile(r"^(hr|ndcg|mrr)@(\d+)$")


def metric_k(metric: str) -> int:
    """The cut-off of a metric name such as ``ndcg@10``."""
    m = METRIC_RE.match(metric)
    if not m:
        raise ConfigError(f"unknown metric {metric!r} (expected hr@K, ndcg@K or mrr@K)")
    return int(m.group(2))


@dataclass
class Run:
    """One (dataset, model, seed) run: its summary row and its folder."""

    row: dict
    run_dir: Path

    @property
    def dataset(self) -> str:
        return self.row["dataset"]

    @property
    def model(self) -> str:
        return self.row["model"]

    @property
    def seed(self) -> int:
        return int(self.row["seed"])

    @cached_property
    def result(self) -> dict | None:
        path = self.run_dir / "result.json"
        return _read(path) if path.exists() else None

    def test_cases(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Users, 0-based ranks and ties of the test cases (zero ties in files written before
        ties were stored), or None when ``per_case.npz`` is missing."""
        path = self.run_dir / "per_case.npz"
        if not path.exists():
            return None
        with np.load(path) as npz:
            return stored_cases(npz, "test")


@dataclass
class SuiteResults:
    name: str
    suite_dir: Path
    runs: list[Run]
    robustness: dict | None = None
    diagnostics: dict | None = None
    sweep: dict | None = None
    sweep_path: Path | None = None
    failed: list[dict] = field(default_factory=list)  # rows whose status is not "ok"
    world_check: dict | None = None  # dataset -> the suite's world check (world_check.json)

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r.dataset for r in self.runs))

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.runs))

    def runs_of(self, dataset: str, model: str) -> list[Run]:
        return [r for r in self.runs if r.dataset == dataset and r.model == model]


def _read(path: Path):
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def find_suite_dir(target: str | Path, results_dir: str | Path = "results") -> Path:
    """A suite's results folder from a suite name or a path (a suite folder, or a results folder
    holding exactly one suite)."""
    path = Path(target)
    for candidate in (path, Path(results_dir) / str(target)):
        if (candidate / "summary.json").is_file():
            return candidate
    if path.is_dir():
        suites = sorted(p.parent.name for p in path.glob("*/summary.json"))
        if len(suites) == 1:
            return path / suites[0]
        if suites:
            raise ConfigError(f"{path} holds several suites ({', '.join(suites)}): name one")
    raise ConfigError(f"no results for {str(target)!r}: neither {path / 'summary.json'} nor "
                      f"{Path(results_dir) / str(target) / 'summary.json'} exists "
                      f"(run `bench run --suite {path.name}` first)")


def load_results(target: str | Path, results_dir: str | Path = "results") -> SuiteResults:
    """Everything the report needs from a suite's results folder."""
    suite_dir = find_suite_dir(target, results_dir)
    summary = _read(suite_dir / "summary.json")
    if not isinstance(summary, dict) or not isinstance(summary.get("rows"), list):
        raise DataError(f"{suite_dir / 'summary.json'}: expected an object with a 'rows' list")
    rows = summary["rows"]
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    if not ok:
        raise DataError(f"{suite_dir / 'summary.json'} holds no completed run")
    runs = [Run(r, _run_dir(suite_dir, r)) for r in ok]
    name = summary.get("suite") or suite_dir.name
    sweep_path = next((p for p in (suite_dir.parent / f"{name}-sweep" / "sweep.json",
                                   suite_dir / "sweep.json") if p.is_file()), None)
    return SuiteResults(
        name=name, suite_dir=suite_dir, runs=runs,
        robustness=_optional(suite_dir / "robustness.json", "rows", ("model", "perturbation",
                                                                     "rate", "metrics")),
        diagnostics=_diagnostics(suite_dir / "diagnostics.json"),
        world_check=(read_json(suite_dir / "world_check.json")
                     if (suite_dir / "world_check.json").is_file() else None),
        sweep=_sweep(sweep_path) if sweep_path else None,
        sweep_path=sweep_path, failed=[r for r in rows if r not in ok])


def _run_dir(suite_dir: Path, row: dict) -> Path:
    """The run's folder in the suite's layout (so moved results still resolve), else as stored."""
    from ..lifecycle import run_folder

    canonical = run_folder(suite_dir.parent, suite_dir.name, row["dataset"], row["model"],
                           row["seed"])
    return canonical if canonical.is_dir() or not row.get("run_dir") else Path(row["run_dir"])


def _optional(path: Path, key: str, required: tuple[str, ...]) -> dict | None:
    """An optional JSON file ``{key: [entries]}``; a dict ``{name: entry}`` becomes a list of
    entries with ``model = name``. Each entry must have the required fields."""
    if not path.is_file():
        return None
    obj = _read(path)
    entries = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(entries, dict):
        entries = [{"model": name, **entry} for name, entry in entries.items()]
    _check_entries(path, entries, key, required)
    return {**obj, key: entries}


def _check_entries(path: Path, entries, key: str, required: tuple[str, ...]) -> None:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DataError(f"{path}: expected an object with a {key!r} list (see docs/reports.md)")
    for i, entry in enumerate(entries):
        missing = [f for f in ("model", *required) if f not in entry]
        if missing:
            raise DataError(f"{path}: {key}[{i}] lacks {', '.join(missing)} (see docs/reports.md)")


def _diagnostics(path: Path) -> dict | None:
    """``diagnostics.json`` (schema: docs/robustness.md): per-seed ``models`` entries in every
    schema, and from schema 2 the ``verdicts`` over seeds, which the report shows."""
    doc = _optional(path, "models", ("verdict",))
    if doc is not None and "verdicts" in doc:
        _check_entries(path, doc["verdicts"], "verdicts",
                       ("dataset", "seeds", "outcome", "status", "modalities"))
    return doc


def _sweep(path: Path) -> dict | None:
    """``sweep.json``; a study without a ``trials`` list takes its trials from ``trials.csv``
    beside it (Optuna's ``trials_dataframe`` with ``study``/``dataset``/``model`` columns)."""
    sweep = _optional(path, "studies", ())
    csv_path = path.parent / "trials.csv"
    if sweep is None or all("trials" in s for s in sweep["studies"]) or not csv_path.is_file():
        return sweep
    import csv

    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for study in sweep["studies"]:
        if "trials" in study:
            continue
        mine = [r for r in rows if r.get("study") == study.get("name") or (
            "name" not in study and (r.get("model"), r.get("dataset")) ==
            (study["model"], study.get("dataset")))]
        study["trials"] = [
            {"number": int(r["number"]), "value": float(r["value"]) if r.get("value") else None,
             "state": r.get("state", ""),
             "params": {k[7:]: v for k, v in r.items() if k.startswith("params_") and v != ""}}
            for r in mine]
    return sweep


def per_user(users: np.ndarray, ranks: np.ndarray, metric: str,
             ties: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted user ids and each user's mean per-case metric (one case per user under LOO),
    ties counted as in the evaluator (expected metric over the tied block)."""
    values = case_metrics(ranks, ks=(metric_k(metric),), ties=ties)[metric]
    uniq, inverse = np.unique(np.asarray(users), return_inverse=True)
    return uniq, np.bincount(inverse, weights=values) / np.bincount(inverse)


def seed_averaged(runs: list[Run], metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Each user's metric averaged over the runs' seeds, on the users every seed evaluated;
    None if a run lacks its per-case ranks."""
    per_seed = []
    for run in sorted(runs, key=lambda r: r.seed):
        cases = run.test_cases()
        if cases is None:
            return None
        users, ranks, ties = cases
        per_seed.append(per_user(users, ranks, metric, ties))
    common = per_seed[0][0]
    for users, _ in per_seed[1:]:
        common = np.intersect1d(common, users)
    values = [v[np.searchsorted(u, common)] for u, v in per_seed]
    return common, np.mean(values, axis=0)
