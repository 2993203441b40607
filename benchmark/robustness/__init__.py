"""Robustness: test-time perturbations of the item content, swept over rates.

A perturbation acts on the encoder inputs (:mod:`benchmark.encoders.inputs`): the run is loaded
back (:func:`benchmark.lifecycle.load_run`) on the same dataset with its content features computed
from perturbed inputs (a new embedding cache key, so clean embeddings are never reused) and its
clean trained weights, and the test split is evaluated by the common
:class:`~benchmark.evaluation.Evaluator`.
The perturbed items are chosen by the perturbation seed alone, so every model sees the same ones.

Layout, in ``<results>/<suite>/``::

    robustness.json                                   {"rows": [...], "skipped": [...]}
    robustness/<dataset>/<model>/seed-<s>/<perturbation>@<rate>.npz   per-case test ranks

A row: ``{dataset, model, seed, perturbation, rate, perturbation_seed, metrics, groups, spec,
run_config_hash, ranks, seconds, untrained_keys, mlflow_run_id}`` (``groups``: metrics per case label, e.g.
``signal=visual``); rate 0 is the clean evaluation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from ..config import Suite
from ..errors import ConfigError
from ..io import atomic_write_json, read_json

log = logging.getLogger(__name__)

#: the perturbations of ``bench robustness`` (names of :data:`benchmark.encoders.inputs.PERTURBATIONS`)
NAMES = ("drop_image", "drop_text", "image_noise", "image_blur", "image_jpeg", "modality_swap",
         "word_dropout", "word_shuffle", "typos")
DEFAULT_RATES = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_SEED = 0


def perturbation_spec(name: str, rate: float, seed: int = DEFAULT_SEED) -> dict | None:
    """The encoder-input spec of a perturbation at a rate (None at rate 0: the clean inputs)."""
    from ..encoders.inputs import check_perturbation

    spec = {"name": name, "rate": float(rate), "seed": int(seed)}
    check_perturbation(spec)
    return None if float(rate) == 0.0 else spec


def unsupported(spec, name: str) -> str | None:
    """Why a model cannot be evaluated under a perturbation, or None if it can: a model that
    reads a perturbed modality itself instead of through declared features is refused (its
    metrics would silently stay clean)."""
    from ..encoders.inputs import PERTURBATIONS, target_modalities

    if name not in PERTURBATIONS:
        raise ConfigError(f"unknown perturbation {name!r}")
    raw = [m for m in target_modalities({"name": name})
           if m in spec.modalities and m not in spec.features and not spec.raw_content]
    if raw:
        return (f"{spec.name} reads its {'/'.join(raw)} input itself (no declared features); "
                "input perturbations do not reach it yet")
    return None


def load_trained(suite: Suite, prep, model_name: str, seed: int, spec: dict | None, opts):
    """A trained run of the suite rebuilt on (perturbed, when ``spec`` is given) content with
    its stored weights, in eval mode (:func:`benchmark.lifecycle.load_run`)."""
    from ..lifecycle import load_run

    return load_run(run_folder(suite, prep, model_name, seed, opts), prep=prep,
                    cache_dir=opts.cache_dir, device=opts.device, perturbation=spec)


def evaluate_perturbed(suite: Suite, prep, model_name: str, seed: int, spec: dict | None,
                       opts):
    """Test-time evaluation of a trained run under a perturbation spec (None: clean):
    (the test :class:`~benchmark.evaluation.EvalResult`, keys left at initialisation)."""
    from ..lifecycle import make_evaluator, scorer

    handle = load_trained(suite, prep, model_name, seed, spec, opts)
    evaluator = make_evaluator(suite.evaluation, prep.split, prep.data.n_items, handle.params,
                               prep.labels)
    return evaluator.evaluate(scorer(handle.model, opts.device), "test"), handle.fresh


def run_folder(suite: Suite, prep, model_name: str, seed: int, opts) -> Path:
    from ..lifecycle import run_folder as folder

    return folder(opts.results_dir, suite.name, prep.entry.label, model_name, seed)


def _rate_label(rate: float) -> str:
    return f"{rate:g}"


def train_time_rows(suite: Suite, name: str, rates: list[float], opts,
                    seed: int = DEFAULT_SEED) -> list[dict]:
    """Train-time robustness: the suite's models trained and evaluated on perturbed content,
    one derived suite ``<suite>-train-<name>@<rate>`` per rate (a normal, resumable run);
    rows labelled ``<name>+train`` (rate 0: the clean suite's own runs)."""
    from ..runner import run_suite

    models = [m for m in suite.models if unsupported(suite.spec(m), name) is None]
    rows = []
    for rate in rates:
        spec = perturbation_spec(name, rate, seed)
        if spec is None:  # the clean suite, already run by run_robustness
            done = read_json(opts.results_dir / suite.name / "summary.json")["rows"]
            runs = [r for r in done if r["model"] in models]
        else:
            sub = replace(suite, name=f"{suite.name}-train-{name}@{rate:g}", models=models)
            runs = run_suite(sub, replace(opts, resume=True, perturbation=spec))
        for r in runs:
            rows.append({"dataset": r["dataset"], "model": r["model"], "seed": r["seed"],
                         "perturbation": f"{name}+train", "rate": float(rate),
                         "perturbation_seed": seed,
                         "metrics": r["test"], "spec": spec, "run_dir": r["run_dir"],
                         "mlflow_run_id": r.get("mlflow_run_id")})
    return rows


def run_robustness(suite: Suite, perturbations: list[str], rates: list[float], opts,
                   seed: int = DEFAULT_SEED, train_time: bool = False) -> dict:
    """Evaluate every (dataset, model, seed) of a suite under each perturbation and rate.

    The suite is run first (resumable: completed runs are skipped). Rows already in
    ``robustness.json`` for the same trained run and spec are kept, not recomputed. With
    ``train_time``, :func:`train_time_rows` are added too (perturbation ``<name>+train``).
    """
    from ..runner import _save_npz, prepare_dataset, run_suite
    from ..tracking import Tracker

    for name in perturbations:
        perturbation_spec(name, 1.0, seed)
    rates = sorted({float(r) for r in rates} | {0.0})
    for r in rates:
        if not 0.0 <= r <= 1.0:
            raise ConfigError(f"rates must be in [0, 1], got {r}")
    run_suite(suite, replace(opts, resume=True))
    suite_dir = opts.results_dir / suite.name
    out_path = suite_dir / "robustness.json"
    old = read_json(out_path) if out_path.exists() else {}
    rows: list[dict] = list(old.get("rows", []))
    done = {_row_key(r): i for i, r in enumerate(rows)}
    skipped: list[dict] = []
    tracker = Tracker(opts.results_dir, experiment=f"bench-{suite.name}",
                      uri=opts.tracking_uri or suite.tracking_uri, enabled=opts.tracking)
    parent = tracker.start(f"{suite.name}/robustness",
                           params={"perturbations": perturbations, "rates": rates,
                                   "perturbation_seed": seed})
    try:
        for entry in suite.datasets:
            prep = prepare_dataset(entry, suite, opts)
            for model_name in suite.models:
                mspec = suite.spec(model_name)
                for s in suite.seeds:
                    run_dir = run_folder(suite, prep, model_name, s, opts)
                    run_hash = read_json(run_dir / "result.json")["config_hash"]
                    rows = [r for r in rows if not _stale(r, entry.label, model_name, s, run_hash)]
                    done = {_row_key(r): i for i, r in enumerate(rows)}
                    clean = None
                    for name in perturbations:
                        why = unsupported(mspec, name)
                        if why:  # once per (dataset, model, perturbation), not per seed
                            skip = {"dataset": entry.label, "model": model_name,
                                    "perturbation": name, "reason": why}
                            if skip not in skipped:
                                skipped.append(skip)
                                log.warning("robustness: skip %s", why)
                            continue
                        for rate in rates:
                            key = (entry.label, model_name, s, name, rate, seed, run_hash)
                            if key in done:
                                continue
                            spec = perturbation_spec(name, rate, seed)
                            t0 = time.perf_counter()
                            if spec is None and clean is not None:
                                result, fresh = clean  # rate 0: the same clean evaluation
                            else:
                                result, fresh = evaluate_perturbed(suite, prep, model_name, s,
                                                                   spec, opts)
                            if spec is None:
                                clean = result, fresh
                            npz = (suite_dir / "robustness" / entry.label / model_name /
                                   f"seed-{s}" / f"{name}@{_rate_label(rate)}.npz")
                            npz.parent.mkdir(parents=True, exist_ok=True)
                            _save_npz(npz, **result.arrays())
                            run_id = tracker.start(
                                f"{entry.label}/{model_name}/seed-{s}/{name}@{rate:g}",
                                params={"model": model_name, "dataset": entry.label, "seed": s,
                                        "perturbation": name, "rate": rate,
                                        "perturbation_seed": seed},
                                parent=parent,
                                tags={"model": model_name, "dataset": entry.label,
                                      "suite": suite.name, "kind": "robustness"})
                            tracker.log_metrics(run_id, {f"test_{k}": v
                                                         for k, v in result.metrics.items()})
                            tracker.log_files(run_id, [npz])
                            tracker.end(run_id)
                            row = {"dataset": entry.label, "model": model_name, "seed": s,
                                   "perturbation": name, "rate": rate,
                                   "perturbation_seed": seed, "metrics": result.metrics, "groups": result.groups,
                                   "spec": spec, "run_config_hash": run_hash,
                                   "ranks": str(npz.relative_to(suite_dir)),
                                   "seconds": round(time.perf_counter() - t0, 3),
                                   "untrained_keys": fresh,
                                   "mlflow_run_id": run_id}
                            done[key] = len(rows)
                            rows.append(row)
                            atomic_write_json(out_path, {"suite": suite.name, "rows": rows,
                                                         "skipped": skipped})
        if train_time:
            for name in perturbations:
                label = f"{name}+train"
                rows = [r for r in rows if r["perturbation"] != label]
                rows += train_time_rows(suite, name, rates, opts, seed)
        atomic_write_json(out_path, {"suite": suite.name, "rows": rows, "skipped": skipped})
    except BaseException:
        tracker.end(parent, status="FAILED")
        raise
    tracker.end(parent)
    return {"rows": rows, "skipped": skipped, "path": out_path}


def _stale(row: dict, dataset: str, model: str, seed: int, run_hash: str) -> bool:
    """A row of an earlier training of the same (dataset, model, seed)."""
    return ("run_config_hash" in row  # a test-time row (train-time rows have their own runs)
            and (row.get("dataset"), row["model"], row.get("seed")) == (dataset, model, seed)
            and row["run_config_hash"] != run_hash)


def _row_key(row: dict) -> tuple:
    return (row.get("dataset"), row["model"], row.get("seed"), row["perturbation"],
            float(row["rate"]), row.get("perturbation_seed"), row.get("run_config_hash"))


def degradation_table(rows: list[dict], metric: str = "ndcg@10", group: str | None = None) -> str:
    """Mean ``metric`` per (dataset, perturbation, model) and rate, as text; on the test cases
    of a case label (``group``, e.g. ``signal=visual``) when given."""
    from ..stats import mean_ci

    def value(r: dict) -> float | None:
        if group is None:
            return r["metrics"].get(metric)
        return r.get("groups", {}).get(group, {}).get(metric)

    rows = [r for r in rows if value(r) is not None]
    where = f" [{group}]" if group else ""
    lines = []
    for d, p in dict.fromkeys((r.get("dataset"), r["perturbation"]) for r in rows):
        sel = [r for r in rows if r.get("dataset") == d and r["perturbation"] == p]
        rates = sorted({float(r["rate"]) for r in sel})
        lines.append(f"{d} / {p}: test {metric}{where} by rate "
                     + "  ".join(f"{x:g}" for x in rates))
        for m in dict.fromkeys(r["model"] for r in sel):
            cells = []
            for x in rates:
                vals = [value(r) for r in sel if r["model"] == m and float(r["rate"]) == x]
                cells.append(f"{mean_ci(vals)[0]:.4f}" if vals else "-")
            lines.append(f"  {m:<16} " + "  ".join(cells))
    return "\n".join(lines)
