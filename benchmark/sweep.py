"""Optuna sweeps: tune every model of a suite on validation, then re-run the best with the seeds.

One study per (suite, dataset, model), named from everything that defines its objective, so that
every worker on every machine that runs the same command joins the same study. A trial trains on
the training split with the suite's first seed and a configuration sampled from the model's
registered search space, reports validation NDCG@10 after each epoch (the pruner may stop it) and
never touches the test split. Each study stops at exactly ``n_trials`` finished (complete or
pruned) trials: a worker reserves a trial under a storage-wide lock (a PostgreSQL/MySQL advisory
lock, a file lock for sqlite) after counting the finished and running ones, and a trial whose
worker died (no heartbeat) is failed and replaced. The best configuration of each study is then
run with every seed of the suite through the normal runner and evaluated once on test.

Layout (``<results>/<suite>-sweep/``): ``optuna.db`` (default storage), ``sweep.json`` (studies,
best parameters, importances, trial counts), ``trials.csv``, and the runner's ``summary.json`` /
``runs/`` for the final seeded runs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import lifecycle
from .config import Suite
from .errors import BenchError, ConfigError
from .io import atomic_write, atomic_write_json, read_json, stable_hash
from .registry import get_model_spec
from .runner import Options, Prepared

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage

log = logging.getLogger(__name__)

OBJECTIVE = "ndcg@10"  # validation metric that selects a configuration
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
BACKENDS = ("sqlite", "postgresql", "mysql")
SPACE_KEYS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
              "categorical": {"choices"}}


class SweepError(RuntimeError):
    """A sweep that could not finish (a worker failed); rerunning the command resumes it."""


@dataclass
class SweepSettings:
    n_trials: int = 20  # finished trials per study, all workers together
    storage: str | None = None  # any Optuna RDB URL; None = sqlite inside the sweep folder
    workers: int = 1  # local worker processes
    sampler: str = "tpe"
    pruner: str = "median"
    final: bool = True  # re-run the best configurations with the suite's seeds
    heartbeat_interval: int = 30  # seconds between a running trial's heartbeats
    grace_period: int = 120  # a running trial without a heartbeat for this long is failed


@dataclass(frozen=True)
class StudyRef:
    dataset: int  # index into suite.datasets
    label: str
    model: str
    name: str


def sweep_dir(suite: Suite, opts: Options) -> Path:
    return Path(opts.results_dir) / f"{suite.name}-sweep"


# -- search spaces ------------------------------------------------------------------------------

def check_search_space(model: str, space: dict[str, dict[str, Any]], spec=None) -> None:
    """Raise ConfigError, naming the model and parameter, for anything Optuna would reject or the
    model could not take (unknown parameter, wrong value type). ``spec``: the registry entry
    behind ``model`` (a suite variant's base model; default: the registered ``model``)."""
    spec = spec or get_model_spec(model)
    known = spec.all_defaults()
    if not isinstance(space, dict):
        raise ConfigError(f"model {model!r}: search space must be a mapping")
    for name, entry in space.items():
        where = f"model {model!r}: search space of {name!r}"
        if name not in known:
            raise ConfigError(f"{where}: {model} has no parameter {name!r}")
        if not isinstance(entry, dict) or entry.get("type") not in SPACE_KEYS:
            raise ConfigError(f"{where}: 'type' must be one of {', '.join(SPACE_KEYS)}")
        extra = set(entry) - SPACE_KEYS[entry["type"]] - {"type"}
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        if entry["type"] == "categorical":
            choices = entry.get("choices")
            if not isinstance(choices, (list, tuple)) or not choices:
                raise ConfigError(f"{where}: 'choices' must be a non-empty list")
            values = list(choices)
        else:
            if "low" not in entry or "high" not in entry:
                raise ConfigError(f"{where}: needs 'low' and 'high'")
            values = [entry["low"], entry["high"]]
            number = int if entry["type"] == "int" else (int, float)
            if not all(isinstance(v, number) and not isinstance(v, bool) for v in values):
                raise ConfigError(f"{where}: 'low' and 'high' must be {entry['type']}s")
            if entry["low"] > entry["high"]:
                raise ConfigError(f"{where}: low {entry['low']} > high {entry['high']}")
            if entry.get("log") and entry["low"] <= 0:
                raise ConfigError(f"{where}: a log scale needs low > 0")
        cast = {"float": float, "int": int}.get(entry["type"], lambda v: v)
        for value in values:  # the model must accept every value the space can give
            spec.resolve(None, {name: cast(value)})
        try:
            to_distribution(entry)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}: {e}") from None


def to_distribution(entry: dict[str, Any]) -> optuna.distributions.BaseDistribution:
    """One registry search-space entry as an Optuna distribution."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind = entry["type"]
    if kind == "float":
        return FloatDistribution(float(entry["low"]), float(entry["high"]),
                                 log=bool(entry.get("log", False)), step=entry.get("step"))
    if kind == "int":
        return IntDistribution(int(entry["low"]), int(entry["high"]),
                               log=bool(entry.get("log", False)), step=int(entry.get("step", 1)))
    if kind == "categorical":
        return CategoricalDistribution(list(entry["choices"]))
    raise ValueError(f"unknown search-space type {kind!r}")


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sample every parameter of a search space through the trial's public ``suggest_*`` API."""
    from optuna.distributions import FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, entry in space.items():
        d = to_distribution(entry)
        if isinstance(d, FloatDistribution):
            out[name] = trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, IntDistribution):
            out[name] = trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
        else:
            out[name] = trial.suggest_categorical(name, d.choices)
    return out


# -- storage ------------------------------------------------------------------------------------

def default_storage(folder: Path) -> str:
    return f"sqlite:///{(Path(folder) / 'optuna.db').resolve()}"


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def check_storage_url(url: str) -> str:
    """Validate an Optuna RDB URL (sqlite with a file, PostgreSQL or MySQL)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    expected = "sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DB or mysql://..."
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(f"storage {redact(url)!r} is not a database URL ({expected})") from None
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise ConfigError(f"unsupported storage {redact(url)!r}: backend {backend!r} "
                          f"({expected})")
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError("an sqlite storage needs a file: sqlite:///PATH")
    return url


def open_storage(url: str, settings: SweepSettings) -> RDBStorage:
    """Connect (and create Optuna's tables); a connection problem is one ConfigError line."""
    from optuna.exceptions import StorageInternalError
    from optuna.storages import RDBStorage
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    check_storage_url(url)
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        Path(parsed.database).resolve().parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 120}}
    elif backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 15}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat options are flagged experimental
        try:
            return RDBStorage(url, engine_kwargs=kwargs,
                              heartbeat_interval=settings.heartbeat_interval,
                              grace_period=settings.grace_period)
        except ModuleNotFoundError as e:
            hint = " (pip install 'psycopg[binary]')" if backend == "postgresql" else ""
            raise ConfigError(f"storage {redact(url)!r}: driver {e.name!r} not installed"
                              f"{hint}") from None
        except (SQLAlchemyError, StorageInternalError, OSError) as e:  # refused, bad password...
            first = str(getattr(e, "orig", None) or e).strip().splitlines()
            raise ConfigError(f"cannot open storage {redact(url)!r}: "
                              f"{first[0] if first else type(e).__name__}") from None


@contextlib.contextmanager
def storage_lock(storage: RDBStorage, name: str) -> Iterator[None]:
    """A lock shared by every process using the storage: released if the holder dies."""
    from sqlalchemy import text

    backend = storage.engine.dialect.name
    digest = hashlib.sha256(name.encode()).digest()
    if backend == "sqlite":
        import fcntl

        path = Path(storage.engine.url.database).resolve()
        with open(path.with_name(path.name + ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    if backend == "postgresql":
        key = {"k": int.from_bytes(digest[:8], "big", signed=True)}
        take, give = "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"
    elif backend == "mysql":
        key = {"k": "bench-" + digest.hex()[:32]}
        take, give = "SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"
    else:  # pragma: no cover - check_storage_url admits only the three above
        raise ConfigError(f"no lock for storage backend {backend!r}")
    with storage.engine.connect() as conn:
        conn.execute(text(take), key)
        try:
            yield
        finally:
            conn.execute(text(give), key)


# -- studies and trials -------------------------------------------------------------------------

def study_name(suite: Suite, prep: Prepared, model: str) -> str:
    """Deterministic: the same suite, data, split, fixed parameters and space give the same name."""
    spec, params = lifecycle.resolve(suite, model)
    space = spec.search_space
    fixed = {k: v for k, v in params.items() if k not in space}
    identity = {"fixed": fixed, "space": space, "dataset": prep.data.content_hash,
                "split": prep.split.checksum, "evaluation": suite.evaluation,
                "seed": suite.seeds[0], "objective": f"valid {OBJECTIVE}"}
    return f"{suite.name}.{prep.entry.label}.{model}.{stable_hash(identity, 10)}"


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(kind: str) -> optuna.pruners.BasePruner:
    import optuna

    if kind == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


def trial_counts(storage: RDBStorage, name: str) -> dict[str, int]:
    """Trials of a study per state name (COMPLETE, PRUNED, RUNNING, WAITING, FAIL)."""
    study_id = storage.get_study_id_from_name(name)
    counts: dict[str, int] = {}
    for t in storage.get_all_trials(study_id, deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def reserve_trial(study: optuna.Study, storage: RDBStorage, n_trials: int,
                  sampler: str) -> optuna.Trial | None:
    """A new running trial, or None once finished + running trials reach ``n_trials``.

    Under the storage lock: fail trials whose worker stopped beating, count, create. The sampler
    is seeded from the study name and the new trial's number, so a run is reproducible and no two
    workers draw alike."""
    import optuna
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    with storage_lock(storage, study.study_name), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # heartbeats are driven here, not by Study.optimize (which Optuna warns about)
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        optuna.storages.fail_stale_trials(study)
        study_id = storage.get_study_id_from_name(study.study_name)
        trials = storage.get_all_trials(study_id, deepcopy=False)
        if sum(t.state in live for t in trials) >= n_trials:
            return None
        seed = int(stable_hash([study.study_name, len(trials)], 8), 16)
        study.sampler = make_sampler(sampler, seed)
        trial = study.ask()
        storage.record_heartbeat(trial._trial_id)
        return trial


@contextlib.contextmanager
def heartbeat(storage: RDBStorage, trial_id: int, interval: float) -> Iterator[None]:
    """Record the trial's heartbeat every ``interval`` seconds while the block runs."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except (SQLAlchemyError, StorageInternalError) as e:  # retried at the next beat
                log.warning("heartbeat of trial %d failed: %s", trial_id, e)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def epoch_reporter(trial: optuna.Trial, tracker, run_id: str | None):
    """The Trainer's ``on_epoch`` hook: log the epoch, report validation NDCG@10, maybe prune."""
    import optuna

    def on_epoch(epoch: int, row: dict) -> None:
        tracker.log_metrics(run_id, row, step=epoch)
        trial.report(float(row[f"valid_{OBJECTIVE}"]), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    return on_epoch


def objective(suite: Suite, prep: Prepared, model_name: str, params: dict, opts: Options,
              trial: optuna.Trial, tracker, run_id: str | None, workdir: Path) -> float:
    """Train one configuration; return its best validation NDCG@10 (test is never evaluated)."""
    seed = suite.seeds[0]
    handle = lifecycle.build_model(suite.spec(model_name), params, prep.data, workdir, seed,
                                   opts.device, prep.split, opts.cache_dir, opts.progress)
    evaluator = lifecycle.make_evaluator(suite.evaluation, prep.split, prep.data.n_items,
                                         params, prep.labels)
    hook = epoch_reporter(trial, tracker, run_id)
    outcome = lifecycle.train(handle, prep.split, evaluator, progress=opts.progress,
                              on_epoch=hook)
    if outcome is not None:
        return float(outcome.best_valid.get(OBJECTIVE, 0.0))
    handle.model.eval()  # nothing optimised (statistics): one validation
    metrics = evaluator.evaluate(lifecycle.scorer(handle.model, opts.device), "valid").metrics
    hook(0, {f"valid_{k}": v for k, v in metrics.items()})
    return float(metrics.get(OBJECTIVE, 0.0))


def run_trial(job: WorkerJob, ref: StudyRef, prep: Prepared, study: optuna.Study,
              storage: RDBStorage, trial: optuna.Trial, tracker) -> str:
    """Run one reserved trial to its end and tell the study; returns the final state's name."""
    import tempfile

    import optuna
    from optuna.trial import TrialState

    suite = job.suite
    spec = suite.spec(ref.model)
    scratch = sweep_dir(suite, job.opts) / "scratch"
    state, value, run_id = TrialState.COMPLETE, None, None
    try:
        with heartbeat(storage, trial._trial_id, job.settings.heartbeat_interval):
            sampled = suggest(trial, spec.search_space)
            _, params = lifecycle.resolve(suite, ref.model, sampled)
            run_id = tracker.start(
                f"{ref.label}/{ref.model}/trial-{trial.number}",
                params={**params, "seed": suite.seeds[0], "dataset": ref.label,
                        "model": ref.model},
                parent=job.parent_run,
                tags={"sweep_study": ref.name, "trial_number": trial.number,
                      "model": ref.model, "dataset": ref.label, "suite": suite.name,
                      "worker": job.worker})
            scratch.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=scratch) as workdir:
                value = objective(suite, prep, ref.model, params, job.opts, trial, tracker,
                                  run_id, Path(workdir))
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except FloatingPointError as e:  # a diverging configuration: stopped like a pruned one
        trial.set_user_attr("diverged", str(e))
        state = TrialState.PRUNED
    except BaseException:
        _tell(study, trial, TrialState.FAIL)
        tracker.set_tags(run_id, {"trial_state": "FAIL"})
        tracker.end(run_id, status="FAILED")
        raise
    _tell(study, trial, state, value)
    if value is not None:
        tracker.log_metrics(run_id, {f"trial_valid_{OBJECTIVE}": value})
    tracker.set_tags(run_id, {"trial_state": state.name})
    tracker.end(run_id)
    log.info("%s trial %d: %s %s", ref.name, trial.number, state.name, value)
    return state.name


def _tell(study, trial, state, value: float | None = None) -> None:
    import optuna

    try:
        study.tell(trial, value, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale meanwhile
        log.warning("trial %d was already finished (stale heartbeat); result dropped",
                    trial.number)


# -- workers ------------------------------------------------------------------------------------

@dataclass
class WorkerJob:
    suite: Suite
    opts: Options
    settings: SweepSettings
    storage_url: str
    studies: list[StudyRef]
    parent_run: str | None
    worker: int = 0
    verbose: bool = False


def _tracker(suite: Suite, opts: Options):
    from .tracking import Tracker

    return Tracker(opts.results_dir, experiment=f"bench-{suite.name}-sweep",
                   uri=opts.tracking_uri or suite.tracking_uri, enabled=opts.tracking)


def _quiet_optuna(verbose: bool) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def work(job: WorkerJob) -> int:
    """One worker: run trials of every study in turn until each holds its total; returns how
    many trials this worker ran."""
    import optuna

    from .runner import prepare_dataset

    _quiet_optuna(job.verbose)
    if job.settings.workers > 1:  # share the cores between the local workers
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // job.settings.workers))
    storage = open_storage(job.storage_url, job.settings)
    tracker = _tracker(job.suite, job.opts)
    preps: dict[int, Prepared] = {}
    ran = 0
    for ref in job.studies:
        if ref.dataset not in preps:
            preps[ref.dataset] = prepare_dataset(job.suite.datasets[ref.dataset], job.suite,
                                                 job.opts)
        study = optuna.load_study(study_name=ref.name, storage=storage,
                                  pruner=make_pruner(job.settings.pruner))
        while (trial := reserve_trial(study, storage, job.settings.n_trials,
                                      job.settings.sampler)) is not None:
            run_trial(job, ref, preps[ref.dataset], study, storage, trial, tracker)
            ran += 1
    return ran


def _worker_entry(job: WorkerJob) -> None:
    """Entry point of a spawned worker process: errors as one line, exit codes as the CLI's."""
    logging.basicConfig(level=logging.INFO if job.verbose else logging.WARNING,
                        format=f"%(levelname)s worker-{job.worker} %(name)s: %(message)s")
    try:
        work(job)
        code = 0
    except BenchError as e:
        print(f"bench: error: worker {job.worker}: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    # Every result is committed by now: skip the interpreter's teardown, which spends seconds
    # in native destructors (torch, RecBole) before the process ends.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _spawn(job: WorkerJob) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no forked torch state
    procs = [ctx.Process(target=_worker_entry, args=(dataclasses.replace(job, worker=i),),
                         name=f"bench-sweep-{i}") for i in range(job.settings.workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:  # the workers got the same SIGINT: let them record their trials
        for p in procs:
            p.join(timeout=60)
        raise
    failed = [f"worker {i} (exit code {p.exitcode})" for i, p in enumerate(procs)
              if p.exitcode != 0]
    if failed:
        raise SweepError(f"{', '.join(failed)} failed; rerun the same command to resume")


# -- the sweep ----------------------------------------------------------------------------------

def _check_settings(suite: Suite, settings: SweepSettings) -> None:
    if settings.n_trials < 1:
        raise ConfigError("--trials must be >= 1")
    if settings.workers < 1:
        raise ConfigError("--workers must be >= 1")
    if settings.sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {settings.sampler!r} ({', '.join(SAMPLERS)})")
    if settings.pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner {settings.pruner!r} ({', '.join(PRUNERS)})")
    for model in suite.models:
        check_search_space(model, suite.spec(model).search_space, suite.spec(model))


def _parent_run(tracker, folder: Path, suite: Suite, settings: SweepSettings,
                storage_url: str) -> str | None:
    """The sweep's MLflow parent run: the one recorded in the folder, else a new one."""
    record = folder / "sweep_run.json"
    if record.exists():
        saved = read_json(record)
        if saved.get("tracking_uri") == tracker.uri and saved.get("mlflow_run_id"):
            return saved["mlflow_run_id"]
    run_id = tracker.start(f"{suite.name}-sweep", params={
        "models": suite.models, "datasets": [d.label for d in suite.datasets],
        "seeds": suite.seeds, "preset": suite.preset, "n_trials": settings.n_trials,
        "sampler": settings.sampler, "pruner": settings.pruner,
        "storage": redact(storage_url), "objective": f"valid {OBJECTIVE}"})
    if run_id is not None:
        atomic_write_json(record, {"mlflow_run_id": run_id, "tracking_uri": tracker.uri})
    return run_id


def study_summary(storage: RDBStorage, ref: StudyRef, settings: SweepSettings,
                  suite: Suite) -> dict:
    """Counts per state, the best trial and parameter importances of one study."""
    import optuna

    study = optuna.load_study(study_name=ref.name, storage=storage)
    counts = trial_counts(storage, ref.name)
    finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
    out: dict[str, Any] = {
        "name": ref.name, "dataset": ref.label, "model": ref.model,
        "search_space": suite.spec(ref.model).search_space, "n_trials": settings.n_trials,
        "states": counts, "best_trial": None, "best_value": None, "best_params": None,
        "importances": None, "importance_note": None,
        "complete": finished >= settings.n_trials and not counts.get("RUNNING")
        and counts.get("COMPLETE", 0) > 0}
    if counts.get("COMPLETE", 0):
        best = study.best_trial
        out.update(best_trial=best.number, best_value=best.value, best_params=best.params)
    out["importances"], out["importance_note"] = _importances(study)
    return out


def _importances(study) -> tuple[dict[str, float] | None, str | None]:
    """Parameter importances (Optuna's default evaluator), or None and the reason."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, f"needs at least 2 complete trials, has {len(complete)}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            values = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as e:
            return None, str(e)
    note = "; ".join(sorted({str(w.message) for w in caught})) or None
    return {k: float(v) for k, v in values.items()}, note


def _write_trials_csv(storage: RDBStorage, refs: list[StudyRef], path: Path) -> None:
    import optuna
    import pandas as pd

    frames = []
    for ref in refs:
        df = optuna.load_study(study_name=ref.name, storage=storage).trials_dataframe(
            attrs=("number", "value", "state", "datetime_start", "datetime_complete",
                   "duration", "params", "user_attrs"))
        frames.append(df.assign(study=ref.name, dataset=ref.label, model=ref.model))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def tuned_studies(suite: Suite, opts: Options) -> dict[tuple[str, str], dict]:
    """``bench run --tuned``: the sweep study of every (dataset, model) of the suite that has a
    search space, from ``<results>/<suite>-sweep/sweep.json``; a model without a search space
    keeps its defaults (nothing to tune). A missing sweep or best configuration is a
    ConfigError, raised before any work."""
    path = sweep_dir(suite, opts) / "sweep.json"
    if not path.is_file():
        raise ConfigError(f"--tuned: no sweep of suite {suite.name!r} ({path} not found): run "
                          f"`bench sweep --suite {suite.name}` first")
    studies = {(s.get("dataset"), s.get("model")): s for s in read_json(path).get("studies", [])}
    out, missing = {}, []
    for entry in suite.datasets:
        for model in suite.models:
            if not suite.spec(model).search_space:
                continue
            study = studies.get((entry.label, model))
            if study is None or not study.get("best_params"):
                missing.append(f"{model} on {entry.label}"
                               + (" (no complete trial)" if study else ""))
            else:
                out[(entry.label, model)] = {**study, "sweep": str(path)}
    if missing:
        raise ConfigError(f"--tuned: {path} has no best configuration for "
                          f"{', '.join(missing)}: sweep them first (`bench sweep --suite "
                          f"{suite.name} --models ...`)")
    return out


def check_tuned(suite: Suite, prep: Prepared, tuned: dict[tuple[str, str], dict]) -> None:
    """The sweep's studies for this dataset must be the ones this run would have swept (same
    data, split, evaluation, trial seed and fixed parameters: the study name encodes them)."""
    for (label, model), study in tuned.items():
        if label != prep.entry.label:
            continue
        expected = study_name(suite, prep, model)
        if study.get("name") != expected:
            raise ConfigError(f"--tuned: the sweep's study {study.get('name')!r} of {model} on "
                              f"{label} was run with other data, split, first seed or fixed "
                              f"parameters than this run (its study would be {expected!r}): "
                              "sweep again with this run's options")


def final_runs(suite: Suite, opts: Options, preps: list[Prepared],
               best: dict[tuple[str, str], dict], tracker, parent: str | None) -> list[dict]:
    """Each model's best configuration with every seed of the suite, through the normal runner
    (test evaluated once per run); resumable like ``bench run --resume``."""
    from .provenance import environment_card
    from .runner import run_one, write_summary

    env_card = environment_card(opts.device)
    final_opts = dataclasses.replace(opts, resume=True)
    rows: list[dict] = []
    for prep in preps:
        atomic_write_json(sweep_dir(suite, opts) / "splits" / f"{prep.entry.label}.json",
                          {**prep.split.summary(), "dataset_hash": prep.data.content_hash})
        for model in suite.models:
            tuned = copy.deepcopy(suite)
            tuned.name = f"{suite.name}-sweep"
            tuned.model_params = {**suite.model_params, model: {
                **suite.model_params.get(model, {}), **best.get((prep.entry.label, model), {})}}
            for seed in suite.seeds:
                rows.append(run_one(tuned, prep, model, seed, final_opts, tracker, parent,
                                    env_card))
                write_summary(tuned, rows, sweep_dir(suite, opts))
    return rows


def run_sweep(suite: Suite, opts: Options, settings: SweepSettings,
              verbose: bool = False) -> dict:
    """Run (or resume) the sweep of a suite; returns the ``sweep.json`` summary, with the final
    runs' rows under ``rows`` when they ran."""
    from .runner import prepare_dataset

    _check_settings(suite, settings)
    folder = sweep_dir(suite, opts)
    folder.mkdir(parents=True, exist_ok=True)
    url = check_storage_url(settings.storage or default_storage(folder))
    _quiet_optuna(verbose)
    import optuna

    storage = open_storage(url, settings)  # creates the tables before any worker starts
    tracker = _tracker(suite, opts)  # likewise MLflow's database and experiment
    parent = _parent_run(tracker, folder, suite, settings, url)
    preps = [prepare_dataset(entry, suite, opts) for entry in suite.datasets]
    refs: list[StudyRef] = []
    for i, prep in enumerate(preps):
        for model in suite.models:
            if not suite.spec(model).search_space:
                continue  # nothing to tune: the final runs use the defaults
            name = study_name(suite, prep, model)
            with storage_lock(storage, name):  # launchers on other machines may race here
                study = optuna.create_study(study_name=name, storage=storage,
                                            direction="maximize", load_if_exists=True)
                if "bench" not in study.user_attrs:
                    study.set_user_attr("bench", {"suite": suite.name, "model": model,
                                                  "dataset": prep.entry.label,
                                                  "objective": f"valid {OBJECTIVE}"})
            refs.append(StudyRef(i, prep.entry.label, model, name))
    job = WorkerJob(suite, dataclasses.replace(opts, progress=opts.progress and
                                               settings.workers == 1),
                    settings, url, refs, parent, verbose=verbose)
    try:
        if settings.workers == 1:
            work(job)
        else:
            _spawn(job)
    except BaseException:
        tracker.end(parent, status="FAILED")
        raise
    studies = [study_summary(storage, ref, settings, suite) for ref in refs]
    complete = all(s["complete"] for s in studies)
    summary: dict[str, Any] = {
        "suite": suite.name, "storage": redact(url), "n_trials": settings.n_trials,
        "sampler": settings.sampler, "pruner": settings.pruner,
        "objective": f"valid {OBJECTIVE}", "trial_seed": suite.seeds[0], "seeds": suite.seeds,
        "complete": complete, "mlflow_run_id": parent, "tracking_uri": tracker.uri,
        "studies": studies,
        "untuned": [m for m in suite.models if not suite.spec(m).search_space],
        "final": None}
    rows: list[dict] = []
    if settings.final and complete:
        best = {(s["dataset"], s["model"]): s["best_params"] for s in studies}
        rows = final_runs(suite, opts, preps, best, tracker, parent)
        summary["final"] = {"summary": str(folder / "summary.json"), "runs": len(rows)}
    elif settings.final:
        log.warning("a study is not finished yet (trials still running elsewhere?): "
                    "rerun the command to finish it and run the final seeds")
    atomic_write_json(folder / "sweep.json", summary)
    _write_trials_csv(storage, refs, folder / "trials.csv")
    atomic_write_json(folder / "best_params.json",
                      {s["name"]: s["best_params"] for s in studies})
    atomic_write_json(folder / "importances.json",
                      {s["name"]: {"importances": s["importances"], "note": s["importance_note"]}
                       for s in studies})
    tracker.log_files(parent, [folder / f for f in ("sweep.json", "trials.csv",
                                                    "best_params.json", "importances.json")])
    tracker.end(parent)
    with contextlib.suppress(OSError):  # trials' scratch folders are gone: drop their parent
        (folder / "scratch").rmdir()
    return {**summary, "rows": rows}
