"""Optuna sweeps: search-space translation, exact trial budgets under concurrency (sqlite and a
real PostgreSQL server), pruning, resume, and 2-worker sweeps from the command line."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)

from benchmark import registry
from benchmark.cli import main
from benchmark.errors import ConfigError
from benchmark.sweep import (
    SweepSettings,
    check_search_space,
    check_storage_url,
    epoch_reporter,
    make_pruner,
    open_storage,
    redact,
    reserve_trial,
    suggest,
    to_distribution,
)
from benchmark.tracking import Tracker

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- search spaces ------------------------------------------------------------------------------

def test_search_space_translation_each_type():
    space = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
             "hidden_dropout_prob": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
             "n_layers": {"type": "int", "low": 1, "high": 3},
             "batch_size": {"type": "int", "low": 16, "high": 256, "log": True},
             "hidden_size": {"type": "categorical", "choices": [32, 64, 128]}}
    check_search_space("sasrec", space)
    d = {k: to_distribution(v) for k, v in space.items()}
    assert isinstance(d["learning_rate"], optuna.distributions.FloatDistribution)
    assert d["learning_rate"].log and (d["learning_rate"].low, d["learning_rate"].high) == (1e-4, 1e-2)
    assert d["hidden_dropout_prob"].step == 0.1 and not d["hidden_dropout_prob"].log
    assert isinstance(d["n_layers"], optuna.distributions.IntDistribution)
    assert (d["n_layers"].low, d["n_layers"].high, d["n_layers"].step) == (1, 3, 1)
    assert d["batch_size"].log
    assert d["hidden_size"].choices == (32, 64, 128)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        values = suggest(trial, space)
        assert 1e-4 <= values["learning_rate"] <= 1e-2
        assert round(values["hidden_dropout_prob"] * 10, 6).is_integer()
        assert isinstance(values["n_layers"], int) and 1 <= values["n_layers"] <= 3
        assert values["hidden_size"] in (32, 64, 128)
        assert trial.distributions == d
        study.tell(trial, 0.0)
        registry.get_model_spec("sasrec").resolve("tiny", values)  # the model takes them


def test_every_registered_search_space_is_valid():
    for name in registry.list_models():
        check_search_space(name, registry.get_model_spec(name).search_space)


@pytest.mark.parametrize("entry, message", [
    ({"type": "uniform", "low": 0, "high": 1}, "'type' must be one of float, int, categorical"),
    ({"type": "float", "low": 0.1}, "needs 'low' and 'high'"),
    ({"type": "float", "low": 0.5, "high": 0.1}, "low 0.5 > high 0.1"),
    ({"type": "float", "low": 0.0, "high": 0.5, "log": True}, "a log scale needs low > 0"),
    ({"type": "float", "low": 1e-3, "high": 0.5, "log": True, "step": 0.1}, "`step` is not supported"),
    ({"type": "float", "low": "a", "high": 0.5}, "must be floats"),
    ({"type": "categorical", "choices": []}, "'choices' must be a non-empty list"),
    ({"type": "categorical", "choices": [0.1, "x"]}, "must be float"),
    ({"type": "float", "low": 0.0, "high": 0.5, "lo": 1}, "unknown key(s) lo"),
])
def test_bad_search_space_is_a_clear_error(entry, message):
    with pytest.raises(ConfigError) as e:
        check_search_space("sasrec", {"hidden_dropout_prob": entry})
    assert message in str(e.value) and "'hidden_dropout_prob'" in str(e.value)


def test_search_space_of_unknown_parameter_and_int_type():
    with pytest.raises(ConfigError, match="sasrec has no parameter 'dropout'"):
        check_search_space("sasrec", {"dropout": {"type": "float", "low": 0, "high": 1}})
    with pytest.raises(ConfigError, match="must be ints"):
        check_search_space("sasrec", {"n_layers": {"type": "int", "low": 1.5, "high": 3}})
    with pytest.raises(ConfigError, match="'hidden_size' must be int"):
        check_search_space("sasrec", {"hidden_size": {"type": "float", "low": 8, "high": 64}})


def _cli_error(argv: list[str], tmp_path: Path, capsys) -> str:
    rc = main(["sweep", *argv, "--results-dir", str(tmp_path / "r"), "--data-dir",
               str(tmp_path / "d"), "--no-tracking", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("bench: error:")
    return err


def test_cli_bad_search_space_exits_2(monkeypatch, tmp_path, capsys):
    spec = registry.get_model_spec("sasrec")
    bad = {**spec.search_space, "n_layers": {"type": "int", "low": 3, "high": 1}}
    monkeypatch.setitem(registry._MODELS, "sasrec", dataclasses.replace(spec, search_space=bad))
    err = _cli_error(["--models", "sasrec"], tmp_path, capsys)
    assert "model 'sasrec': search space of 'n_layers': low 3 > high 1" in err


@pytest.mark.parametrize("url, message", [
    ("redis://localhost:6379", "unsupported storage 'redis://localhost:6379'"),
    ("no database here", "is not a database URL"),
    ("sqlite://", "an sqlite storage needs a file"),
    ("postgresql://me:hunter2@127.0.0.1:1/db", "cannot open storage 'postgresql://me:***@"),
])
def test_cli_bad_storage_url_exits_2(url, message, tmp_path, capsys):
    err = _cli_error(["--models", "sasrec", "--storage", url], tmp_path, capsys)
    assert message in err and "hunter2" not in err


@pytest.mark.parametrize("argv, message", [
    (["--trials", "0"], "--trials must be >= 1"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--models", "sasrek"], "unknown model 'sasrek'"),
])
def test_cli_bad_sweep_options_exit_2(argv, message, tmp_path, capsys):
    assert message in _cli_error(argv, tmp_path, capsys)


def test_redact_and_check_storage_url():
    assert redact("postgresql://u:p%40ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql+psycopg://u:pw@h/db") == "postgresql+psycopg://u:***@h/db"
    assert redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert check_storage_url("mysql+pymysql://u@h/db") == "mysql+pymysql://u@h/db"


# -- pruning ------------------------------------------------------------------------------------

def _run(study, tracker, values: list[float]):
    """A trial reporting ``values`` epoch after epoch through the Trainer hook; its hook."""
    trial = study.ask()
    hook = epoch_reporter(trial, tracker, None)
    for epoch, v in enumerate(values):
        hook(epoch, {"valid_ndcg@10": v, "train_loss": 1.0})
    return trial, hook


def test_median_pruner_stops_a_trailing_trial(tmp_path):
    tracker = Tracker(tmp_path, "x", enabled=False)
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median"))
    for v in (0.30, 0.32, 0.34, 0.36, 0.38):  # the pruner's 5 startup trials
        trial, _ = _run(study, tracker, [v, v, v])
        study.tell(trial, v)
    trial, hook = _run(study, tracker, [0.05])  # epoch 0 is warm-up: never pruned
    with pytest.raises(optuna.TrialPruned):
        hook(1, {"valid_ndcg@10": 0.05})
    study.tell(trial, state=TrialState.PRUNED)
    good, _ = _run(study, tracker, [0.40, 0.40, 0.40])  # above the median: runs on
    study.tell(good, 0.40)
    assert [t.state for t in study.trials][-2:] == [TrialState.PRUNED, TrialState.COMPLETE]

    unpruned = optuna.create_study(direction="maximize", pruner=make_pruner("none"))
    for v in (0.3, 0.3, 0.3, 0.3, 0.3, 0.01):
        trial, _ = _run(unpruned, tracker, [v, v, v])
        unpruned.tell(trial, v)


# -- the exact budget: reservation under the storage lock ---------------------------------------

def _hammer(url: str, name: str, n_trials: int) -> None:
    """A worker process reserving and finishing trials as fast as it can."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, SweepSettings())
    study = optuna.load_study(study_name=name, storage=storage)
    while (trial := reserve_trial(study, storage, n_trials, "random")) is not None:
        x = trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, x)


def _exact_budget(url: str, n_trials: int = 24, processes: int = 3) -> None:
    storage = open_storage(url, SweepSettings())
    optuna.create_study(study_name="hammer", storage=storage, direction="maximize")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(url, "hammer", n_trials))
             for _ in range(processes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * processes
    trials = optuna.load_study(study_name="hammer", storage=storage).trials
    assert len(trials) == n_trials
    assert sorted(t.number for t in trials) == list(range(n_trials))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.params["x"] for t in trials}) == n_trials  # per-trial seeds: all different


def test_exact_budget_with_concurrent_processes_on_sqlite(tmp_path):
    _exact_budget(f"sqlite:///{tmp_path / 'optuna.db'}")


def test_exact_budget_with_concurrent_processes_on_postgresql(postgres_url):  # noqa: F811
    _exact_budget(postgres_url)


def test_stale_trial_is_failed_and_replaced(tmp_path):
    settings = SweepSettings(heartbeat_interval=1, grace_period=1)
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", settings)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    dead = reserve_trial(study, storage, 1, "tpe")  # its worker "dies": no more heartbeats
    assert dead is not None
    assert reserve_trial(study, storage, 1, "tpe") is None  # a running trial holds the budget
    time.sleep(2.5)
    fresh = reserve_trial(study, storage, 1, "tpe")
    assert fresh is not None and fresh.number == 1
    study.tell(fresh, 0.5)
    states = [t.state for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]
    assert reserve_trial(study, storage, 1, "tpe") is None


# -- sweeps from the command line ---------------------------------------------------------------

def _sweep_argv(dataset: Path, results: Path, *extra: str) -> list[str]:
    return ["sweep", "--dataset", str(dataset), "--epochs", "2", "--results-dir", str(results),
            "-q", *extra]


def _check_study(storage_url: str, name: str, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly ``n_trials`` finished trials numbered 0..n-1: none lost, none twice."""
    trials = optuna.load_study(study_name=name, storage=storage_url).trials
    assert sorted(t.number for t in trials) == list(range(n_trials))
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    return trials


def _check_best(sweep: dict, trials, results: Path, seeds: list[int]) -> None:
    study = sweep["studies"][0]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    assert study["best_trial"] == best.number and study["best_value"] == best.value
    assert study["best_params"] == best.params
    summary = json.loads((results / "accuracy-sweep" / "summary.json").read_text())
    rows = [r for r in summary["rows"] if r["model"] == "sasrec"]
    assert sorted(r["seed"] for r in rows) == seeds
    for r in rows:  # the best configuration, evaluated once on test
        assert set(r["test"]) and set(r["valid"])
        config = json.loads((Path(r["run_dir"]) / "config.json").read_text())
        assert {k: config["params"][k] for k in best.params} == best.params


def test_two_worker_sweep_on_sqlite_then_resume(tiny_dataset, tmp_path, capsys):
    results = tmp_path / "results"
    argv = _sweep_argv(tiny_dataset, results, "--models", "mostpop,sasrec", "--seeds", "0,1")
    assert main([*argv, "--trials", "3", "--workers", "2"]) == 0
    assert "best valid ndcg@10" in capsys.readouterr().out
    folder = results / "accuracy-sweep"
    sweep = json.loads((folder / "sweep.json").read_text())
    url = f"sqlite:///{folder / 'optuna.db'}"
    assert sweep["storage"] == url and sweep["complete"] and sweep["untuned"] == ["mostpop"]
    [study] = sweep["studies"]
    assert study["model"] == "sasrec" and study["name"].startswith("accuracy.tiny.sasrec.")
    trials = _check_study(url, study["name"], 3)
    _check_best(sweep, trials, results, [0, 1])
    assert study["importances"] is None or set(study["importances"]) <= set(study["search_space"])
    assert (folder / "trials.csv").read_text().count("\n") == 4
    assert not (folder / "scratch").exists()  # the trials' working folders are removed

    # MLflow: every trial is one child run of the sweep's run; trials never evaluate test.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bench-accuracy-sweep")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    trial_runs = [r for r in runs if "trial_number" in r.data.tags]
    assert sorted(int(r.data.tags["trial_number"]) for r in trial_runs) == [0, 1, 2]
    parent = sweep["mlflow_run_id"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in trial_runs)
    assert all(not any(k.startswith("test_") for k in r.data.metrics) for r in trial_runs)
    assert all(r.data.tags["trial_state"] in ("COMPLETE", "PRUNED") for r in trial_runs)
    finals = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent
              and "trial_number" not in r.data.tags]
    assert len(finals) == 4  # 2 models x 2 seeds
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"sweep.json", "trials.csv", "best_params.json", "importances.json"} <= artifacts

    # Resume: the same study continues to the new total, then stays there.
    before = {t.number: t.datetime_start for t in trials}
    assert main([*argv, "--trials", "5", "--no-tracking"]) == 0
    trials = _check_study(url, study["name"], 5)
    assert {t.number: t.datetime_start for t in trials if t.number < 3} == before
    assert main([*argv, "--trials", "5", "--no-tracking"]) == 0
    _check_study(url, study["name"], 5)
    _check_best(json.loads((folder / "sweep.json").read_text()), trials, results, [0, 1])


def test_two_worker_sweep_on_postgresql(tiny_dataset, tmp_path, postgres_url):  # noqa: F811
    results = tmp_path / "results"
    argv = _sweep_argv(tiny_dataset, results, "--models", "sasrec", "--seeds", "0",
                       "--trials", "4", "--workers", "2", "--storage", postgres_url,
                       "--no-tracking")
    assert main(argv) == 0
    folder = results / "accuracy-sweep"
    sweep = json.loads((folder / "sweep.json").read_text())
    assert sweep["storage"] == redact(postgres_url) and "s3cret" not in sweep["storage"]
    assert not (folder / "optuna.db").exists()
    [study] = sweep["studies"]
    trials = _check_study(postgres_url, study["name"], 4)
    assert sweep["complete"] and study["states"].get("COMPLETE", 0) >= 1
    _check_best(sweep, trials, results, [0])


def test_failed_trial_is_recorded_and_replaced_on_rerun(tiny_dataset, tmp_path, monkeypatch):
    from benchmark import sweep

    real, calls = sweep.objective, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "objective", flaky)
    results = tmp_path / "results"
    argv = _sweep_argv(tiny_dataset, results, "--models", "sasrec", "--seeds", "0",
                       "--trials", "2", "--no-tracking", "--trials-only")
    with pytest.raises(RuntimeError, match="boom"):
        main(argv)
    assert main(argv) == 0  # the rerun replaces the failed trial
    sweep_json = json.loads((results / "accuracy-sweep" / "sweep.json").read_text())
    assert sweep_json["final"] is None and not (results / "accuracy-sweep" / "runs").exists()
    [study] = sweep_json["studies"]
    url = f"sqlite:///{results / 'accuracy-sweep' / 'optuna.db'}"
    states = [t.state for t in optuna.load_study(study_name=study["name"], storage=url).trials]
    assert states[1] == TrialState.FAIL and len(states) == 3
    assert all(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states[::2])
    assert study["states"]["FAIL"] == 1
