"""Running a suite: every (dataset, model, seed) as one tracked, resumable, atomically stored run.

Results layout (``--results-dir DIR``)::

    DIR/<suite>/summary.json                        one row per model x dataset x seed
    DIR/<suite>/world_check.json                    the world check (controlled datasets only)
    DIR/<suite>/splits/<dataset>.json               the split's checksum and counts
    DIR/<suite>/runs/<dataset>/<model>/seed-<s>/    one run (layout: benchmark.lifecycle)
    DIR/mlflow.db, DIR/mlartifacts/                 MLflow (unless another tracking URI is given)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DatasetEntry, Suite
from .io import atomic_write, atomic_write_json, read_json, stable_hash

log = logging.getLogger(__name__)


@dataclass
class Options:
    results_dir: Path = Path("results")
    data_dir: Path | None = None
    device: str = "cpu"
    resume: bool = False
    progress: bool = True
    tracking: bool = True
    tracking_uri: str | None = None
    cache_dir: Path | None = None  # embedding cache (default: $BENCH_CACHE_DIR or <data>/.cache)
    perturbation: dict | None = None  # content perturbation for training and evaluation
    # (train-time robustness, :mod:`benchmark.robustness`; a spec of benchmark.encoders.inputs)
    tuned: dict | None = None  # (dataset label, model) -> sweep study whose best configuration
    # the run uses (``bench run --tuned``, :func:`benchmark.sweep.tuned_studies`)


@dataclass
class Prepared:
    """A dataset loaded once per suite, with its split and evaluator settings."""

    entry: DatasetEntry
    data: object
    split: object
    labels: dict


def prepare_dataset(entry: DatasetEntry, suite: Suite, opts: Options) -> Prepared:
    return prepare_data(entry, suite.split, opts.data_dir)


def prepare_data(entry: DatasetEntry, split_args: dict, data_dir: Path | None = None) -> Prepared:
    """A dataset entry loaded, split (``split_args``: kind and its options) and labelled."""
    from .data.catalog import resolve_dataset
    from .data.dataset import load_dataset
    from .split import make_split

    root = resolve_dataset(entry.name, data_dir, Path(entry.images) if entry.images else None,
                           entry.options)
    data = load_dataset(root)
    split_args = dict(split_args)
    split = make_split(data, split_args.pop("kind", "loo"), **split_args)
    labels = {k: v for k, v in data.inter_fields.items()
              if v.dtype == object and len(set(v.tolist())) <= 32}
    return Prepared(entry, data, split, labels)


def run_one(suite: Suite, prep: Prepared, model_name: str, seed: int, opts: Options,
            tracker, parent_run: str | None, env_card: dict) -> dict:
    from . import lifecycle

    study = (opts.tuned or {}).get((prep.entry.label, model_name))
    spec, params = lifecycle.resolve(suite, model_name, study["best_params"] if study else None)
    ev = suite.evaluation
    run_dir = lifecycle.run_folder(opts.results_dir, suite.name, prep.entry.label, model_name,
                                   seed)
    identity = {"model": model_name, "params": params, "dataset": prep.data.content_hash,
                "split": prep.split.checksum, "evaluation": ev, "seed": seed}
    if spec.stage is not None:  # a change to the stage model's settings retrains this one
        identity["stage_params"] = spec.stage_params(params)
    if opts.perturbation is not None:
        identity["perturbation"] = opts.perturbation
    config_hash = stable_hash(identity)
    result_path = run_dir / "result.json"
    if opts.resume:  # a killed process (kill -9) left its child run RUNNING: end it as KILLED
        tracker.mark_killed({"config_hash": config_hash, "model": model_name,
                             "dataset": prep.entry.label}, params={"seed": seed})
    if opts.resume and result_path.exists():
        done = read_json(result_path)
        if done.get("config_hash") == config_hash:
            log.info("skip %s/%s/seed-%d: already complete", prep.entry.label, model_name, seed)
            return done["row"]
    checkpoint = run_dir / "checkpoint.pt"
    if not opts.resume and checkpoint.exists():
        checkpoint.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", {
        **identity, "load": lifecycle.load_info(prep.entry, suite.split, spec.name)})

    t0 = time.perf_counter()
    run_name = f"{prep.entry.label}/{model_name}/seed-{seed}"
    run_id = tracker.start(run_name, params={**params, "seed": seed, "dataset": prep.entry.label,
                                             "model": model_name, "evaluation": ev},
                           parent=parent_run,
                           tags={"model": model_name, "dataset": prep.entry.label,
                                 "suite": suite.name, "config_hash": config_hash})
    try:
        handle = lifecycle.build_model(spec, params, prep.data, run_dir, seed, opts.device,
                                       prep.split, opts.cache_dir, opts.progress,
                                       perturbation=opts.perturbation)
        evaluator = lifecycle.make_evaluator(ev, prep.split, prep.data.n_items, params,
                                             prep.labels)

        def log_epoch(ep: int, row: dict) -> None:
            tracker.log_metrics(run_id, row, step=ep)

        def log_step(step: int, row: dict) -> None:  # per-step diagnostics (VLM2Rec)
            tracker.log_metrics(run_id, {f"train_{k}": v for k, v in row.items()
                                         if isinstance(v, (int, float)) and k != "step"},
                                step=step)

        outcome = lifecycle.train(handle, prep.split, evaluator, checkpoint=checkpoint,
                                  resume=opts.resume, progress=opts.progress,
                                  on_epoch=log_epoch, on_step=log_step)
        train_info: dict = {}
        if outcome is not None:
            train_info = {"best_epoch": outcome.best_epoch, "epochs": outcome.epochs_run,
                          "train_seconds": outcome.seconds, "resumed_from": outcome.resumed_from,
                          "history": outcome.history}
        score = lifecycle.scorer(handle.model, opts.device)
        handle.model.eval()
        valid = evaluator.evaluate(score, "valid")
        test = evaluator.evaluate(score, "test")  # touched once, after model selection
        wall = time.perf_counter() - t0
        _save_npz(run_dir / "per_case.npz", **valid.arrays(), **test.arrays())  # ranks, ties
        lifecycle.save_run(handle, outcome)
        row = {"suite": suite.name, "dataset": prep.entry.label, "model": model_name,
               "seed": seed, "status": "ok", "valid": valid.metrics, "test": test.metrics,
               "test_groups": test.groups, "test_group_sizes": test.group_sizes,
               "test_group_protocols": test.group_protocols,
               "wall_seconds": wall, "run_dir": str(run_dir), "mlflow_run_id": run_id,
               "best_epoch": train_info.get("best_epoch"), "epochs": train_info.get("epochs")}
        content = handle.content_card()
        size = {"total": sum(p.numel() for p in handle.model.parameters()),
                "trainable": sum(p.numel() for p in handle.model.parameters()
                                 if p.requires_grad)}
        if handle.features:  # what the content features carry: linear probes, warm -> cold items
            from .encoders.probes import probe_features

            if probes := probe_features(prep.data, prep.split, handle.features):
                content["probes"] = probes
        card = {**env_card, "dataset": {"name": prep.entry.label,
                                        "content_hash": prep.data.content_hash,
                                        "counts": prep.data.manifest.get("counts"),
                                        "coverage": prep.data.manifest.get("coverage"),
                                        "findings": prep.data.manifest.get("findings")},
                "split": prep.split.summary(), "config_hash": config_hash, "config": identity,
                "content": content, "parameters": size,
                **({"tuning": {"sweep": study["sweep"], "study": study["name"],
                               "best_trial": study.get("best_trial"),
                               "best_value": study.get("best_value"),
                               "params": study["best_params"]}} if study else {}),
                "seed": seed, "wall_seconds": wall, "mlflow_run_id": run_id,
                "tracking_uri": tracker.uri}
        atomic_write_json(result_path, {"config_hash": config_hash, "row": row,
                                        "train": train_info, "provenance": card})
        if checkpoint.exists():
            checkpoint.unlink()
        tracker.log_metrics(run_id, {**{f"best_valid_{k}": v for k, v in valid.metrics.items()},
                                     **{f"test_{k}": v for k, v in test.metrics.items()},
                                     "wall_seconds": wall})
        for group, metrics in test.groups.items():
            tracker.log_metrics(run_id, {f"test_{group}_{k}": v for k, v in metrics.items()})
        tracker.log_files(run_id, [result_path, run_dir / "per_case.npz",
                                   run_dir / "config.json"])
        tracker.end(run_id)
        return row
    except KeyboardInterrupt:
        tracker.end(run_id, status="KILLED")
        raise
    except Exception:
        tracker.end(run_id, status="FAILED")
        raise


def _save_npz(path: Path, **arrays) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)


def run_suite(suite: Suite, opts: Options) -> list[dict]:
    """Run every (dataset, model, seed) of a suite; ``summary.json`` is rewritten after each."""
    from tqdm.auto import tqdm

    from .provenance import environment_card
    from .tracking import Tracker

    suite_dir = opts.results_dir / suite.name
    suite_dir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(opts.results_dir, experiment=f"bench-{suite.name}",
                      uri=opts.tracking_uri or suite.tracking_uri, enabled=opts.tracking)
    parent_file = suite_dir / "suite_run.json"
    parent = None
    if opts.resume and parent_file.exists():
        parent = read_json(parent_file).get("mlflow_run_id")
    if parent is None:
        parent = tracker.start(suite.name, params={"models": suite.models, "seeds": suite.seeds,
                                                   "datasets": [d.label for d in suite.datasets],
                                                   "preset": suite.preset})
        atomic_write_json(parent_file, {"mlflow_run_id": parent, "tracking_uri": tracker.uri})
    env_card = environment_card(opts.device)
    # runs of this suite recorded by an earlier call (e.g. other --models) stay in the summary
    summary_path = suite_dir / "summary.json"
    rows: list[dict] = read_json(summary_path).get("rows", []) if summary_path.exists() else []
    done: list[dict] = []  # the runs of this call, in order
    total = len(suite.datasets) * len(suite.models) * len(suite.seeds)
    bar = tqdm(total=total, desc=f"suite {suite.name}", disable=not opts.progress)
    try:
        for entry in suite.datasets:
            prep = prepare_dataset(entry, suite, opts)
            if opts.tuned is not None:  # the sweep must have tuned on this data and split
                from .sweep import check_tuned

                check_tuned(suite, prep, opts.tuned)
            atomic_write_json(suite_dir / "splits" / f"{entry.label}.json",
                              {**prep.split.summary(), "dataset_hash": prep.data.content_hash})
            for model in suite.models:
                for seed in suite.seeds:
                    bar.set_postfix_str(f"{entry.label}/{model}/seed-{seed}")
                    row = run_one(suite, prep, model, seed, opts, tracker, parent, env_card)
                    rows = _upsert(rows, row)
                    done.append(row)
                    write_summary(suite, rows, suite_dir)
                    bar.update(1)
    finally:
        bar.close()
    write_world_check(suite, rows, suite_dir)
    tracker.end(parent)
    return done


WORLD_CHECK_FILE = "world_check.json"


def write_world_check(suite: Suite, rows: list[dict], suite_dir: Path) -> dict:
    """The world check (:mod:`benchmark.worldcheck`) of every controlled-modality dataset of
    the suite, over all its stored runs, into ``world_check.json`` ({} when none applies)."""
    from .worldcheck import suite_model_info, world_check

    info = suite_model_info(suite)
    checks = {e.label: world_check(rows, e.label, models=info) for e in suite.datasets}
    checks = {label: doc for label, doc in checks.items() if doc["applies"]}
    path = suite_dir / WORLD_CHECK_FILE
    if checks:
        atomic_write_json(path, checks)
    elif path.exists():
        path.unlink()
    return checks


def _upsert(rows: list[dict], row: dict) -> list[dict]:
    """``rows`` with ``row`` replacing the row of the same (dataset, model, seed), or appended."""
    key = (row["dataset"], row["model"], row["seed"])
    out = [r if (r["dataset"], r["model"], r["seed"]) != key else row for r in rows]
    return out if row in out else out + [row]


def write_summary(suite: Suite, rows: list[dict], suite_dir: Path) -> None:
    atomic_write_json(suite_dir / "summary.json", {"suite": suite.name, "rows": rows})


def summary_table(rows: list[dict], cutoff: int | None = None) -> str:
    """Mean +- 95% CI over seeds, per dataset and model; signal groups when the data has them.
    Metrics at ``cutoff`` (default: 10 if evaluated, else the largest cut-off evaluated)."""
    from .stats import mean_ci

    if not rows:
        return "(no runs)"
    ks = sorted({int(m.split("@")[1]) for m in rows[0]["test"]})
    k = cutoff or (10 if 10 in ks else ks[-1])
    metrics = (f"ndcg@{k}", f"hr@{k}", f"mrr@{k}")
    groups = sorted({g for r in rows for g in r.get("test_groups", {})
                     if g.startswith("signal=") and "," not in g and g != "signal=start"})
    cols = [f"test {m}" for m in metrics] + [f"{g[7:]} ndcg@{k}" for g in groups]
    header = ["dataset", "model", "seeds", *cols]
    lines = []
    keys = list(dict.fromkeys((r["dataset"], r["model"]) for r in rows))
    for dataset, model in keys:
        sel = [r for r in rows if r["dataset"] == dataset and r["model"] == model]
        cells = [dataset, model, str(len(sel))]
        for m in metrics:
            mean, ci = mean_ci([r["test"][m] for r in sel])
            cells.append(f"{mean:.4f} ± {ci:.4f}")
        for g in groups:
            vals = [r["test_groups"][g][f"ndcg@{k}"] for r in sel if g in r.get("test_groups", {})]
            mean, ci = mean_ci(vals)
            cells.append(f"{mean:.4f} ± {ci:.4f}")
        lines.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    out += [fmt.format(*cells) for cells in lines]
    return "\n".join(out)
