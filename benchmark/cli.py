"""The ``bench`` command. Heavy libraries are imported inside the commands that need them, so
``bench --help`` and ``bench list`` answer at once. A user error prints one line, exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import BenchError, ConfigError


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _ints(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}")


def _floats(value: str) -> list[float]:
    try:
        return [float(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}")


def _key_values(pairs: list[str] | None) -> dict:
    """``key=value`` pairs; values parsed as YAML scalars (numbers, booleans, strings)."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {pair!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, str):  # YAML 1.1 reads "2e-3" (no dot) as a string
            try:
                parsed = float(parsed) if parsed.strip().lower() not in ("nan", "inf", "-inf",
                                                                         "infinity") else parsed
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def _check_device(device: str) -> str:
    if device == "cpu":
        return device
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but MPS is not available")
    if not (device.startswith("cuda") or device == "mps"):
        raise ConfigError(f"unknown device {device!r} (cpu, cuda, cuda:N or mps)")
    return device


# -- commands ---------------------------------------------------------------------------------

def _suite_from_args(args):
    """The suite named by ``--suite``, edited by the command-line options and re-validated."""
    from .config import DatasetEntry, load_suite

    suite = load_suite(args.suite)
    if args.models:
        for m in args.models:
            suite.spec(m)  # a registered model or one of the suite's variants
        suite.models = args.models
    if args.dataset:
        suite.datasets = [DatasetEntry(args.dataset, str(args.images) if args.images else None,
                                       _key_values(args.data_option))]
    elif args.images or args.data_option:
        for d in suite.datasets:
            d.images = str(args.images) if args.images else d.images
            d.options.update(_key_values(args.data_option))
    if args.seeds:
        suite.seeds = args.seeds
    if args.preset:
        suite.preset = args.preset
    overrides = _key_values(args.set)
    if args.epochs is not None:
        if args.epochs < 1:
            raise ConfigError("--epochs must be >= 1")
        overrides["epochs"] = args.epochs
    suite.params.update(overrides)
    if args.eval_mode:
        suite.evaluation["mode"] = args.eval_mode
    from .config import parse_suite  # re-validate the edited suite before any work

    parse_suite({k: v for k, v in _suite_dict(suite).items()}, "command line")
    return suite


def _options(args, resume: bool = False):
    from .runner import Options

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError("--threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)  # on a shared machine 1 thread can be far faster
    results_dir, tracking = _writable_dir(Path(args.results_dir), "--results-dir"), \
        not args.no_tracking
    if args.data_dir is not None:  # imported datasets may sit in a read-only folder
        _writable_dir(args.data_dir, "--data-dir", write=False)
    if tracking:  # an unknown scheme or an unreachable server: one line now, not a traceback later
        from .tracking import check_tracking_uri, resolve_tracking_uri

        check_tracking_uri(resolve_tracking_uri(results_dir, args.tracking_uri))
    if args.quiet:  # Hugging Face's own bars (checkpoint loading), without importing it
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    rank = int(os.environ.get("RANK", "0"))
    if rank:  # under torchrun only rank 0 records results; the others write a scratch copy
        results_dir, tracking = results_dir / f".rank-{rank}", False
    return Options(results_dir=results_dir, data_dir=args.data_dir,
                   device=_check_device(args.device), resume=resume, progress=not args.quiet and
                   not rank, tracking=tracking, tracking_uri=args.tracking_uri)


def _writable_dir(path: Path, flag: str, write: bool = True) -> Path:
    """``path`` if the run can create or write that folder (``write=False``: only that it is
    not a file); a file in its place, or an unwritable parent, is refused before any work.
    Creates nothing."""
    existing = next(p for p in (path, *path.parents) if p.exists())  # "." or "/" at worst
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under a file, {existing}"
        raise ConfigError(f"{flag} {path} {where}: give a folder")
    if write and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {existing} is not writable")
    return path


def _print_plan(suite, opts) -> int:
    """``run --dry-run``: what the run would do, every parameter resolved and checked; no data
    is built and nothing is written."""
    import json

    if opts.tracking:
        from .tracking import check_tracking_uri, resolve_tracking_uri

        uri = check_tracking_uri(resolve_tracking_uri(opts.results_dir,
                                                      opts.tracking_uri or suite.tracking_uri))
    else:
        uri = "off"
    print(f"suite {suite.name}: datasets {', '.join(d.label for d in suite.datasets)}; "
          f"seeds {suite.seeds}; preset {suite.preset}; evaluation {suite.evaluation}")
    print(f"results {opts.results_dir / suite.name}; device {opts.device}; tracking {uri}; "
          f"resume {opts.resume}")
    for model in suite.models:
        spec = suite.spec(model)
        name = model if spec.name == model else f"{model} ({spec.name})"
        tuned = {label: s for (label, m), s in (opts.tuned or {}).items() if m == model}
        for label, study in tuned.items() or [(None, None)]:
            best = study["best_params"] if study else {}
            params = spec.resolve(suite.preset, {**suite.model_overrides(model), **best})
            where = (f" [tuned on {label}: sweep trial {study.get('best_trial')}]"
                     if study else "")
            print(f"model {name}{where}: {json.dumps(params, sort_keys=True)}")
    return 0


def cmd_run(args) -> int:
    from .runner import WORLD_CHECK_FILE, run_suite, summary_table

    suite = _suite_from_args(args)
    opts = _options(args, resume=args.resume)
    if args.tuned:
        from .sweep import tuned_studies

        opts.tuned = tuned_studies(suite, opts)
    if args.dry_run:
        return _print_plan(suite, opts)
    rows = run_suite(suite, opts)
    print(f"\nsuite {suite.name}: {len(rows)} runs, results in "
          f"{opts.results_dir / suite.name / 'summary.json'}")
    print(summary_table(rows))
    check = opts.results_dir / suite.name / WORLD_CHECK_FILE
    if check.is_file():
        from .io import read_json
        from .worldcheck import format_world_check

        print("\n" + "\n".join(format_world_check(doc) for doc in read_json(check).values()))
    return 0


def cmd_sweep(args) -> int:
    from .runner import summary_table
    from .sweep import SweepError, SweepSettings, run_sweep, sweep_dir

    suite = _suite_from_args(args)
    opts = _options(args)
    settings = SweepSettings(n_trials=args.trials, storage=args.storage, workers=args.workers,
                             sampler=args.sampler, pruner=args.pruner,
                             final=not args.trials_only)
    try:
        out = run_sweep(suite, opts, settings, verbose=args.verbose)
    except SweepError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    folder = sweep_dir(suite, opts)
    print(f"\nsweep {suite.name}: {args.trials} trials per study, storage {out['storage']}")
    for s in out["studies"]:
        states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(s["states"].items()))
        best = "-" if s["best_value"] is None else f"{s['best_value']:.4f} {s['best_params']}"
        print(f"  {s['dataset']}/{s['model']}: {states}; best valid ndcg@10 {best}")
    if out["rows"]:
        print(f"final runs with seeds {suite.seeds}: {folder / 'summary.json'}")
        print(summary_table(out["rows"]))
    elif settings.final:
        print("studies not finished (trials running elsewhere?): rerun the command to finish")
    return 0


def _suite_dict(suite) -> dict:
    return {"name": suite.name, "description": suite.description,
            "datasets": [{"name": d.name, "images": d.images, "options": d.options}
                         for d in suite.datasets],
            "models": suite.models, "seeds": suite.seeds, "preset": suite.preset,
            "split": suite.split, "evaluation": suite.evaluation, "params": suite.params,
            "model_params": suite.model_params, "variants": suite.variants,
            "tracking_uri": suite.tracking_uri}


def cmd_list(args) -> int:
    if args.what == "models":
        from .registry import get_model_spec, list_models

        names = list_models(args.pattern or "*")
        width = max((len(n) for n in names), default=0)
        for name in names:
            spec = get_model_spec(name)
            mods = "+".join(spec.modalities) or "-"
            presets = ",".join(spec.presets) or "-"
            print(f"{name:<{width}} {mods:<10} presets: {presets:<11} {spec.description}")
    elif args.what == "datasets":
        from .data.catalog import list_datasets

        for name, desc in list_datasets(args.data_dir):
            print(f"{name:<28} {desc}")
    else:
        from .config import list_suites, load_suite

        for name in list_suites():
            s = load_suite(name)
            print(f"{name:<14} {s.description}")
    return 0


def cmd_data(args) -> int:
    import json

    from .data.catalog import default_data_dir

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if args.data_cmd == "inspect":
        from .data.catalog import resolve_dataset
        from .data.dataset import load_dataset

        data = load_dataset(resolve_dataset(args.name, data_dir))
        print(json.dumps(data.manifest, indent=2))
        return 0
    if args.data_cmd == "synth":
        from .data.catalog import resolve_dataset

        root = resolve_dataset("synthetic", data_dir, options=_key_values(args.set))
        print(root)
        return 0
    from .data import importers

    kind = args.kind
    target = data_dir / args.name if getattr(args, "name", None) else None
    if kind == "ml-100k":
        root = importers.import_ml100k(target or data_dir / "ml-100k", images=args.images)
    elif kind == "sequences":
        root = importers.import_sequence_file(args.source, args.items, target, args.name)
    elif kind == "movielens":
        root = importers.import_movielens_csv(args.source, target, args.name, posters=args.images)
    elif kind == "amazon":
        root = importers.import_amazon_raw(args.reviews, args.meta, target, args.name,
                                           k_core=args.k_core, images=not args.no_images,
                                           workers=args.workers)
    else:
        root = importers.import_atomic_folder(args.source, target or data_dir / args.source.name,
                                              args.name, images=args.images)
    from .data.dataset import load_dataset

    m = load_dataset(root).manifest
    print(f"{root}: {m['counts']} coverage={m['coverage']}")
    for f in m.get("findings", []):
        print(f"  finding: {f}")
    return 0


def cmd_report(args) -> int:
    import time

    from .report.build import ReportOptions, render_report

    start = time.perf_counter()
    command = ["bench", "report", args.target]  # shown in the report; --out is not content
    for flag, value, default in (("--results-dir", args.results_dir, "results"),
                                 ("--reference", args.reference, None),
                                 ("--metric", args.metric, "ndcg@10")):
        if value != default:
            command += [flag, str(value)]
    paths = render_report(args.target, args.results_dir, args.out,
                          ReportOptions(reference=args.reference, metric=args.metric,
                                        command=" ".join(command)))
    if not args.quiet:
        for kind, path in paths.items():
            print(f"{kind:<9} {path}")
        print(f"report rendered in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_robustness(args) -> int:
    from .robustness import NAMES, degradation_table, run_robustness

    suite = _suite_from_args(args)
    chosen = [n for n in NAMES if getattr(args, n)]
    if not chosen:
        raise ConfigError("choose at least one perturbation, e.g. --drop-image")
    out = run_robustness(suite, chosen, args.rates, _options(args), seed=args.perturbation_seed,
                         train_time=args.train_time)
    print(f"\nrobustness {suite.name}: {len(out['rows'])} rows in {out['path']}")
    for s in out["skipped"]:
        print(f"  skipped {s['model']} / {s['perturbation']}: {s['reason']}")
    print(degradation_table(out["rows"]))
    if any("signal=visual" in r.get("groups", {}) for r in out["rows"]):
        print(degradation_table(out["rows"], group="signal=visual"))
    return 0


def cmd_diagnose(args) -> int:
    from .diagnostics import run_diagnostics

    if args.target:
        args.suite = args.target
    suite = _suite_from_args(args)
    out = run_diagnostics(suite, _options(args), alpha=args.alpha,
                          tables=not args.verdicts_only)
    print(f"\ndiagnostics {suite.name}: {out['path']}")
    for plot in out["plots"]:
        print(f"  plot: {plot}")
    for e in out["verdicts"]:  # the verdict over seeds; per-seed ones are in the file
        print(f"  {e['dataset']}/{e['model']} (seeds {','.join(map(str, e['seeds']))}): "
              f"[{e['status']}] {e['verdict']}")
    for e in out["models"]:
        if e["verdict"].startswith("not diagnosed"):
            print(f"  {e['dataset']}/{e['model']}/seed-{e['seed']}: {e['verdict']}")
    return 0


# -- parser -----------------------------------------------------------------------------------

def _suite_arguments(r: argparse.ArgumentParser) -> None:
    """The options that pick and edit a suite (``run`` and ``sweep``)."""
    r.add_argument("--suite", default="accuracy", help="suite name or YAML path (default: accuracy)")
    r.add_argument("--models", type=_csv, help="comma-separated model names (default: the suite's)")
    r.add_argument("--dataset", help="dataset name or folder (default: the suite's)")
    r.add_argument("--images", type=Path, help="image folder for a built-in dataset (ml-100k)")
    r.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="dataset option, e.g. synthetic knobs (repeatable)")
    r.add_argument("--seeds", type=_ints, help="comma-separated seeds, e.g. 0,1,2")
    r.add_argument("--epochs", type=int, help="maximum epochs for every trainable model")
    r.add_argument("--preset", help="model preset (tiny, paper, ...)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a model parameter for every model (repeatable)")
    r.add_argument("--eval-mode", choices=["full", "sampled"], help="full ranking or sampled")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    r.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    r.add_argument("--results-dir", default="results", help="where results go (default: results)")
    r.add_argument("--data-dir", type=Path, help="dataset folder (default: $BENCH_DATA_DIR or data)")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in results dir)")
    r.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description=(
        "Benchmark harness for multimodal sequential recommendation (VLM2Rec and baselines)."))
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a suite (models x datasets x seeds)")
    _suite_arguments(r)
    r.add_argument("--resume", action="store_true",
                   help="skip completed runs and continue killed ones from their checkpoint")
    r.add_argument("--dry-run", action="store_true",
                   help="check every option and parameter, print the resolved plan, run nothing")
    r.add_argument("--tuned", action="store_true",
                   help="use each model's best validation configuration from the suite's sweep "
                        "(RESULTS/SUITE-sweep/sweep.json; run `bench sweep` first)")
    r.set_defaults(func=cmd_run)

    sw = sub.add_parser("sweep", help="tune every model of a suite with Optuna on validation, "
                        "then run the best configurations with the suite's seeds")
    _suite_arguments(sw)
    sw.add_argument("--trials", type=int, default=20,
                    help="finished trials per model and dataset, all workers together "
                         "(default: 20)")
    sw.add_argument("--storage", help="Optuna RDB URL shared by workers and machines, e.g. "
                    "postgresql://USER:PASSWORD@HOST:5432/DB (default: sqlite in "
                    "RESULTS/SUITE-sweep/optuna.db)")
    sw.add_argument("--workers", type=int, default=1, help="local worker processes (default: 1)")
    sw.add_argument("--sampler", choices=["tpe", "random"], default="tpe")
    sw.add_argument("--pruner", choices=["median", "none"], default="median",
                    help="stop trials whose validation NDCG@10 trails the median (default)")
    sw.add_argument("--trials-only", action="store_true",
                    help="only run trials (an extra machine); no final seeded runs")
    sw.set_defaults(func=cmd_sweep)

    rb = sub.add_parser("robustness", help="evaluate a suite's trained models under test-time "
                        "content perturbations at several rates (runs the suite first if needed)")
    _suite_arguments(rb)
    for flag, text in (("drop-image", "remove images"), ("drop-text", "remove texts"),
                       ("image-noise", "Gaussian pixel noise"), ("image-blur", "Gaussian blur"),
                       ("image-jpeg", "JPEG quality 5"),
                       ("modality-swap", "another item's image"),
                       ("word-dropout", "drop words"), ("word-shuffle", "shuffle words"),
                       ("typos", "character typos")):
        rb.add_argument(f"--{flag}", action="store_true", help=f"{text} of a share of items")
    rb.add_argument("--rates", type=_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0],
                    help="comma-separated shares of items perturbed (default: 0,0.25,0.5,0.75,1)")
    rb.add_argument("--perturbation-seed", type=int, default=0,
                    help="seed choosing the perturbed items (the same for every model)")
    rb.add_argument("--train-time", action="store_true",
                    help="also train (and test) every model on the perturbed content: one "
                         "derived suite per perturbation and rate")
    rb.set_defaults(func=cmd_robustness)

    dg = sub.add_parser("diagnose", help="modality-dropout test, topology agreement, embedding "
                        "health and a collapse verdict per model; writes diagnostics.json")
    dg.add_argument("target", nargs="?", help="suite name or YAML path (same as --suite)")
    _suite_arguments(dg)
    dg.add_argument("--alpha", type=float, default=0.05,
                    help="level of the paired tests over users (Holm over the two "
                         "modalities) behind each verdict (default: 0.05)")
    dg.add_argument("--verdicts-only", action="store_true",
                    help="only the dropout test and the verdicts: skip the table measures "
                         "(CKA, effective rank, probes), which reload every run")
    dg.set_defaults(func=cmd_diagnose)

    ls = sub.add_parser("list", help="list models, datasets or suites")
    ls.add_argument("what", choices=["models", "datasets", "suites"])
    ls.add_argument("pattern", nargs="?", help="glob pattern for model names")
    ls.add_argument("--data-dir", type=Path)
    ls.set_defaults(func=cmd_list)

    rp = sub.add_parser("report", help="render a report (HTML, Markdown, LaTeX) from stored results")
    rp.add_argument("target", nargs="?", default="accuracy",
                    help="suite name or a suite's results folder (default: accuracy)")
    rp.add_argument("--results-dir", default="results",
                    help="where suite results are looked up by name (default: results)")
    rp.add_argument("--out", default="reports", help="report folder (default: reports)")
    rp.add_argument("--reference", help="reference model of the paired tests "
                    "(default: vlm2rec if in the suite, else the first model)")
    rp.add_argument("--metric", default="ndcg@10",
                    help="metric of the significance, signal and robustness sections")
    rp.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    rp.set_defaults(func=cmd_report)

    d = sub.add_parser("data", help="import, generate and inspect datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path,
                        help="dataset folder (default: $BENCH_DATA_DIR or data)")
    ins = dsub.add_parser("inspect", parents=[common], help="print a dataset's manifest")
    ins.add_argument("name")
    syn = dsub.add_parser("synth", parents=[common],
                          help="generate the controlled-modality dataset")
    syn.add_argument("--set", action="append", metavar="KEY=VALUE", help="a knob (repeatable)")
    imp = dsub.add_parser("import", help="import a dataset into the data folder")
    isub = imp.add_subparsers(dest="kind", required=True)

    def kind(name: str, help: str) -> argparse.ArgumentParser:
        return isub.add_parser(name, parents=[common], help=help)

    a = kind("ml-100k", help="MovieLens-100K from the recbole wheel")
    a.add_argument("--images", type=Path, help="poster folder named <item_id>.jpg")
    a.add_argument("--name")
    a = kind("sequences", help="'user item1 item2 ...' lines + optional item TSV")
    a.add_argument("source", type=Path)
    a.add_argument("--items", type=Path, help="item table (TSV with a header)")
    a.add_argument("--name", required=True)
    a = kind("movielens", help="MovieLens CSV release folder (ratings.csv, movies.csv)")
    a.add_argument("source", type=Path)
    a.add_argument("--images", type=Path, help="poster folder named <movieId>.jpg")
    a.add_argument("--name", required=True)
    a = kind("amazon", help="raw Amazon reviews + metadata (2014/2018/2023 JSONL)")
    a.add_argument("--reviews", type=Path, required=True)
    a.add_argument("--meta", type=Path, required=True)
    a.add_argument("--name", required=True)
    a.add_argument("--k-core", type=int, default=5)
    a.add_argument("--no-images", action="store_true", help="do not download images")
    a.add_argument("--workers", type=int, default=8)
    a = kind("atomic", help="a folder of RecBole atomic files (+ images)")
    a.add_argument("source", type=Path)
    a.add_argument("--images", type=Path)
    a.add_argument("--name")
    d.set_defaults(func=cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted (rerun with --resume to continue)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output's reader stopped early (e.g. `bench list | head`)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (no flush error at exit)
        return 0


if __name__ == "__main__":
    sys.exit(main())
