"""A real-size dataset end to end (issue 14): import, then ``bench run`` with every model that
runs on text and IDs, one seed; wall time per stage, peak memory, the evaluator's users/s.

    nice .venv/bin/python scripts/bench_real_dataset.py --threads 1 \\
        --out results/reference/amazon_beauty_e2e.json

One process, in order, on fresh data, cache and results folders under ``--work``:

1. ``bench data import sequences <shared>/amazon-beauty/sequences.txt --items .../items.tsv``;
2. ``bench run --dataset amazon-beauty --models random,mostpop,cooc,sasrec,unisrec --seeds 0
   --threads N`` (the accuracy suite's settings: tiny presets, full ranking, LOO), the command's
   own code called in this process, with timers around its stages;
3. UniSRec's text features requested again (a second run's encoding stage): the embedding
   cache must answer without loading the encoder.

Stages per model: ``encode`` (content features: MiniLM on the item texts, cached afterwards),
``train`` (the epochs, their validation passes included, reported apart as ``validation``;
counting for the statistics models), ``evaluate`` (the final validation and test passes after
model selection; users/s include the model's scoring) and ``other`` (the rest of the run:
building, probes, files, MLflow). ``rss_mb``: the process's peak resident size during that
model's run (VmHWM, reset before each run; memory kept from earlier runs included). The load average is recorded before and after each stage: these
machines are shared, and seconds mean little without it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
MODELS = "random,mostpop,cooc,sasrec,unisrec"
TARGET_S = 30 * 60


def _hwm_reset() -> bool:
    """Reset the process's peak resident size (Linux >= 4.0); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _rusage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


class Clock:
    """Wall and process-CPU seconds of a block (user and system apart, minor page faults),
    with the load before and after."""

    def __init__(self):
        self.t0, self.c0, self.load0 = time.perf_counter(), time.process_time(), _load()
        self.r0 = _rusage()

    def read(self) -> dict:
        user, system, faults = (b - a for a, b in zip(self.r0, _rusage()))
        return {"wall_s": round(time.perf_counter() - self.t0, 2),
                "cpu_s": round(time.process_time() - self.c0, 2), "user_s": round(user, 2),
                "sys_s": round(system, 2), "minor_faults": int(faults),
                "load_before": self.load0, "load_after": _load()}


def instrument(record: dict):
    """Timers around the stages of ``bench run`` (module attributes looked up at call time)."""
    from benchmark import encoders, lifecycle, runner
    from benchmark.encoders import models
    from benchmark.evaluation import Evaluator

    state = {"model": None, "training": False, "encoded": []}
    prepare, encode_items = encoders.prepare_features, models.encode_items
    train, evaluate, run_one = lifecycle.train, Evaluator.evaluate, runner.run_one
    prepare_dataset = runner.prepare_dataset

    def row() -> dict:
        return record["models"].setdefault(state["model"], {"validation": {"wall_s": 0.0,
                                                                           "cpu_s": 0.0,
                                                                           "passes": 0}})

    def counted_encode_items(encoder, modality, *args, **kwargs):
        state["encoded"].append(modality)
        return encode_items(encoder, modality, *args, **kwargs)

    def timed_prepare(*args, **kwargs):
        clock = Clock()
        state["encoded"] = []
        out = prepare(*args, **kwargs)
        row()["encode"] = {**clock.read(), "encoded": list(state["encoded"]),
                           "items": {m: int(f.present.sum()) for m, f in out.items()},
                           "encode_only_s": {m: f.meta.get("encode_seconds")
                                             for m, f in out.items()}}
        return out

    def timed_train(*args, **kwargs):
        clock = Clock()
        state["training"] = True
        try:
            outcome = train(*args, **kwargs)
        finally:
            state["training"] = False
        row()["train"] = clock.read()
        if outcome is not None:
            row()["train"].update(epochs=outcome.epochs_run, best_epoch=outcome.best_epoch)
        return outcome

    def timed_evaluate(self, score_fn, which="valid", progress=False):
        clock = Clock()
        out = evaluate(self, score_fn, which, progress)
        t = clock.read()
        if state["training"]:
            v = row()["validation"]
            for k in ("wall_s", "cpu_s", "sys_s", "minor_faults"):
                v[k] = round(v.get(k, 0) + t[k], 2)
            v["passes"] += 1
        else:
            n = len(out.ranks)
            row().setdefault("evaluate", {})[which] = {
                **t, "cases": n, "users_per_s": round(n / max(t["wall_s"], 1e-9), 1),
                "users_per_cpu_s": round(n / max(t["cpu_s"], 1e-9), 1)}
        return out

    def timed_run_one(suite, prep, model_name, seed, *args, **kwargs):
        state["model"] = model_name
        _hwm_reset()
        clock = Clock()
        out = run_one(suite, prep, model_name, seed, *args, **kwargs)
        r = row()
        r["run"] = {**clock.read(), "rss_mb": _hwm_mb()}
        r["test_ndcg@10"], r["test_hr@10"] = out["test"]["ndcg@10"], out["test"]["hr@10"]
        return out

    def timed_prepare_dataset(*args, **kwargs):
        _hwm_reset()
        clock = Clock()
        out = prepare_dataset(*args, **kwargs)
        record["stages"]["load_and_split"] = {**clock.read(), "rss_mb": _hwm_mb()}
        return out

    encoders.prepare_features, models.encode_items = timed_prepare, counted_encode_items
    lifecycle.train, Evaluator.evaluate = timed_train, timed_evaluate
    runner.run_one, runner.prepare_dataset = timed_run_one, timed_prepare_dataset

    def restore() -> None:
        encoders.prepare_features, models.encode_items = prepare, encode_items
        lifecycle.train, Evaluator.evaluate = train, evaluate
        runner.run_one, runner.prepare_dataset = run_one, prepare_dataset

    return restore


def summarise(record: dict) -> None:
    """Per model: other = run - encode - train - evaluate; the totals; the verdict."""
    total = {"encode": 0.0, "train": 0.0, "evaluate": 0.0, "other": 0.0}
    for r in record["models"].values():
        enc = r.get("encode", {}).get("wall_s", 0.0)
        tr = r.get("train", {}).get("wall_s", 0.0)
        ev = sum(e["wall_s"] for e in r.get("evaluate", {}).values())
        r["other_wall_s"] = round(r["run"]["wall_s"] - enc - tr - ev, 2)
        for k, v in (("encode", enc), ("train", tr), ("evaluate", ev),
                     ("other", r["other_wall_s"])):
            total[k] = round(total[k] + v, 2)
    record["stage_totals_wall_s"] = total
    whole = record["stages"]["whole"]["wall_s"]
    record["within_30_minutes"] = whole <= TARGET_S


def markdown(record: dict) -> str:
    header = ("| model | encode s | train s (epochs; of which validation s) | evaluate s "
              "(valid + test) | other s | run s | run CPU s (of which system; minor faults) "
              "| test users/s (per CPU-s) | peak RSS MB | test NDCG@10 |")
    lines = [header, "|---" * 10 + "|"]
    for name, r in record["models"].items():
        tr, ev = r.get("train"), r.get("evaluate", {})
        train = "–"
        if tr:
            epochs = f"{tr['epochs']} ep; " if "epochs" in tr else "counting; "
            train = f"{tr['wall_s']} ({epochs}{r['validation']['wall_s']})"
        test = ev.get("test", {})
        rss = r["run"]["rss_mb"]
        lines.append(
            f"| {name} | {r.get('encode', {}).get('wall_s', '–')} | {train} | "
            f"{round(sum(e['wall_s'] for e in ev.values()), 2)} | {r['other_wall_s']} | "
            f"{r['run']['wall_s']} | {r['run']['cpu_s']} ({r['run']['sys_s']}; "
            f"{r['run']['minor_faults'] / 1e6:.2f} M) | "
            f"{test.get('users_per_s')} ({test.get('users_per_cpu_s')}) | "
            f"{rss} | {r['test_ndcg@10']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-real-dataset"),
                    help="fresh data, cache and results folders go here (emptied first)")
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--epochs", type=int, default=None, help="cap on epochs (default: preset)")
    ap.add_argument("--no-tracking", action="store_true", help="no MLflow (default: on)")
    ap.add_argument("--out", type=Path, default=None, help="write the record as JSON here")
    args = ap.parse_args()
    import torch

    from benchmark import cli
    from benchmark.io import atomic_write_json

    source = args.shared / "amazon-beauty"
    if not (source / "sequences.txt").is_file():
        raise SystemExit(f"{source}/sequences.txt not found (pass --shared)")
    marker = args.work / ".bench-real-dataset"  # only a folder this script made is emptied
    if args.work.exists() and any(args.work.iterdir()) and not marker.exists():
        raise SystemExit(f"--work {args.work} is not empty and was not made by this script")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    marker.touch()
    data_dir, cache, results = args.work / "data", args.work / "cache", args.work / "results"
    os.environ["BENCH_CACHE_DIR"] = str(cache)
    record: dict = {
        "command": f"bench run --dataset amazon-beauty --models {args.models} --seeds 0 "
                   f"--threads {args.threads}" + (f" --epochs {args.epochs}" if args.epochs
                                                  else "")
                   + (" --no-tracking" if args.no_tracking else ""),
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "nice": os.nice(0),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "platform": platform.platform()},
        "hwm_reset": _hwm_reset(), "stages": {}, "models": {}}
    whole = Clock()

    clock = Clock()
    code = cli.main(["data", "import", "sequences", str(source / "sequences.txt"), "--items",
                     str(source / "items.tsv"), "--name", "amazon-beauty", "--data-dir",
                     str(data_dir)])
    record["stages"]["import"] = {**clock.read(), "rss_mb": _hwm_mb(), "exit": code}

    restore = instrument(record)
    run_args = ["run", "--dataset", "amazon-beauty", "--models", args.models, "--seeds", "0",
                "--threads", str(args.threads), "--data-dir", str(data_dir), "--results-dir",
                str(results), "-q"]
    run_args += ["--epochs", str(args.epochs)] if args.epochs else []
    run_args += ["--no-tracking"] if args.no_tracking else []
    clock = Clock()
    code = cli.main(run_args)
    record["stages"]["run"] = {**clock.read(), "exit": code}
    record["stages"]["whole"] = whole.read()  # import + run: what the 30-minute target is about
    restore()

    if "unisrec" in args.models.split(","):  # a second run's encoding stage: the cache answers
        from benchmark.data.dataset import load_dataset
        from benchmark.encoders import models, prepare_features
        from benchmark.registry import get_model_spec

        loads = []
        load_encoder = models.load_encoder
        models.load_encoder = lambda *a, **k: loads.append(1) or load_encoder(*a, **k)
        spec = get_model_spec("unisrec")
        data = load_dataset(data_dir / "amazon-beauty")
        params = spec.resolve("tiny", {})
        clock = Clock()
        prepare_features(data, None, {m: params[p] for m, p in spec.features.items()}, cache)
        record["stages"]["second_encode"] = {**clock.read(), "encoder_loaded": bool(loads)}
        models.load_encoder = load_encoder

    summarise(record)
    record["peak_rss_mb_process"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(markdown(record))
    print(json.dumps({k: record[k] for k in ("stages", "stage_totals_wall_s",
                                             "within_30_minutes", "peak_rss_mb_process")}))
    if args.out:
        atomic_write_json(args.out, record)


if __name__ == "__main__":
    main()
