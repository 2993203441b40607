"""The README's MLflow UI command, run as written (on a free loopback port and a temporary
store): a run logged the way `bench run` logs it is read back over HTTP."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_STORE = "sqlite:///results/mlflow.db"


def readme_command() -> tuple[dict[str, str], list[str]]:
    """The environment settings and argv of the README's `mlflow ui` line."""
    line = next(x for x in (ROOT / "README.md").read_text().splitlines()
                if re.search(r"\bmlflow ui\b", x))
    words = shlex.split(line)
    env = dict(w.split("=", 1) for w in words[:words.index("mlflow")])
    return env, words[words.index("mlflow"):]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def test_readme_command_binds_to_loopback():
    _, argv = readme_command()
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--backend-store-uri") + 1] == README_STORE


def test_mlflow_ui_serves_a_bench_run_over_http(tmp_path):
    from benchmark.tracking import Tracker

    results = tmp_path / "results"
    tracker = Tracker(results, experiment="bench-accuracy")
    parent = tracker.start("accuracy", params={"models": ["sasrec"]})
    run_id = tracker.start("synthetic/sasrec/seed-0", params={"seed": 0, "model": "sasrec"},
                           parent=parent, tags={"model": "sasrec", "dataset": "synthetic"})
    tracker.log_metrics(run_id, {"test_ndcg@10": 0.0486})
    tracker.end(run_id)
    tracker.end(parent)

    env, argv = readme_command()
    port = _free_port()
    argv = [str(Path(sys.executable).with_name("mlflow")), *argv[1:]]
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--backend-store-uri") + 1] = f"sqlite:///{results / 'mlflow.db'}"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(argv, cwd=tmp_path, env={**os.environ, **env}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # the server is up when its health endpoint answers
            if proc.poll() is not None:
                pytest.fail(f"mlflow ui exited with {proc.returncode}: "
                            + (tmp_path / "server.log").read_text()[-2000:])
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("mlflow ui did not answer within 120 s: "
                            + (tmp_path / "server.log").read_text()[-2000:])
            time.sleep(0.5)
        run = _get(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
        assert run["info"]["run_name"] == "synthetic/sasrec/seed-0"
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert metrics == {"test_ndcg_at_10": pytest.approx(0.0486)}
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["model"] == "sasrec" and tags["mlflow.parentRunId"] == parent
        exp = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?"
                   "experiment_name=bench-accuracy")["experiment"]
        assert exp["experiment_id"] == run["info"]["experiment_id"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker, nothing else
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
