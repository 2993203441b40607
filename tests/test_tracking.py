"""MLflow tracking: URIs checked before any work, and the child run of a process killed with
``kill -9`` ended as KILLED when ``--resume`` starts its twin."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.errors import ConfigError
from benchmark.tracking import Tracker, check_tracking_uri

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("uri", ["sqlite:////tmp/x/mlflow.db", "mlruns", "/tmp/mlruns",
                                 "file:///tmp/mlruns", "postgresql+psycopg2://u:p@db:5432/m",
                                 "mysql://db/m", "databricks"])
def test_known_schemes_pass_without_contacting_anything(uri):
    assert check_tracking_uri(uri) == uri


def test_unknown_scheme_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError) as e:
        check_tracking_uri("bogus://x")
    assert str(e.value).startswith("tracking URI 'bogus://x': unknown scheme 'bogus' (MLflow "
                                   "knows file, sqlite, postgresql")


def test_http_server_reachable_or_not():
    with socket.socket() as server:  # a listening port: accepted (MLflow talks to it later)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert check_tracking_uri(f"http://127.0.0.1:{port}") == f"http://127.0.0.1:{port}"
    start = time.perf_counter()  # the same port, closed: refused at once, password hidden
    with pytest.raises(ConfigError) as e:
        check_tracking_uri(f"https://me:pw@127.0.0.1:{port}/path", timeout=1.0)
    assert time.perf_counter() - start < 2
    assert f"tracking server https://me:***@127.0.0.1:{port}/path unreachable" in str(e.value)
    assert "pw" not in str(e.value).replace("pw@", "")  # only the redacted form


def test_tracker_turns_a_store_error_into_one_line(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=r"^tracking URI 'sqlite:///.*a-file/m.db': "):
        Tracker(tmp_path / "r", "e", f"sqlite:///{a_file / 'm.db'}")


def test_mark_killed_ends_only_the_matching_running_runs(tmp_path):
    tracker = Tracker(tmp_path, "bench-x")
    tags = {"config_hash": "abc123", "model": "sasrec", "dataset": "tiny"}

    def run(name, seed, **extra):
        return tracker.start(name, params={"seed": seed}, tags={**tags, **extra})

    stale = run("stale", 0)
    finished = run("finished", 0)
    tracker.end(finished)
    other_seed = run("other-seed", 1)
    other_hash = run("other-hash", 0, config_hash="def456")
    other_model = run("other-model", 0, model="mmsrec")
    assert tracker.mark_killed(tags, params={"seed": 0}) == [stale]
    status = {r: tracker.client.get_run(r).info.status
              for r in (stale, finished, other_seed, other_hash, other_model)}
    assert status == {stale: "KILLED", finished: "FINISHED", other_seed: "RUNNING",
                      other_hash: "RUNNING", other_model: "RUNNING"}
    assert tracker.mark_killed(tags, params={"seed": 0}) == []  # nothing left to end
    assert Tracker(tmp_path, "bench-x", enabled=False).mark_killed(tags) == []


@pytest.mark.slow
def test_kill_9_then_resume_leaves_one_finished_child_per_model_and_seed(tiny_dataset, tmp_path):
    """A real ``bench run`` killed with SIGKILL mid-training (after its first checkpoint), then
    ``--resume``: the killed child run is KILLED, its twin FINISHED, nothing stays RUNNING."""
    from mlflow.tracking import MlflowClient

    from benchmark.cli import main

    results = tmp_path / "results"
    # 60 epochs of ~30 ms: the kill lands long before the run could finish
    argv = ["run", "--dataset", str(tiny_dataset), "--models", "mostpop,sasrec", "--seeds", "0,1",
            "--epochs", "60", "--set", "patience=60", "--results-dir", str(results), "-q"]
    run_dir = results / "accuracy" / "runs" / tiny_dataset.name / "sasrec" / "seed-0"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "result.json").exists()  # killed mid-training, not after

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bench-accuracy")

    def children():
        return [r for r in client.search_runs([exp.experiment_id])
                if "mlflow.parentRunId" in r.data.tags]

    killed = [r for r in children() if r.info.status == "RUNNING"]
    assert [(r.data.tags["model"], r.data.params["seed"]) for r in killed] == [("sasrec", "0")]

    assert main([*argv, "--resume"]) == 0
    result = json.loads((run_dir / "result.json").read_text())
    assert result["train"]["resumed_from"] >= 1  # continued from the checkpoint

    runs = children()
    assert not [r for r in client.search_runs([exp.experiment_id])
                if r.info.status == "RUNNING"]  # the suite's parent run included
    finished = sorted((r.data.tags["model"], r.data.params["seed"]) for r in runs
                      if r.info.status == "FINISHED")
    assert finished == [("mostpop", "0"), ("mostpop", "1"), ("sasrec", "0"), ("sasrec", "1")]
    assert [r.info.run_id for r in runs if r.info.status == "KILLED"] == [killed[0].info.run_id]
    assert len(runs) == 5
    assert result["provenance"]["mlflow_run_id"] != killed[0].info.run_id
