"""MLflow tracking: a suite is a parent run, each (model, dataset, seed) a child run.

The tracking URI is, in order: the ``--tracking-uri`` option / suite ``tracking_uri``, the
``MLFLOW_TRACKING_URI`` environment variable, else an sqlite file inside the results folder.
MLflow is imported only here, only when a run is tracked (it costs ~1.5 s).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def resolve_tracking_uri(results_dir: Path, uri: str | None = None) -> str:
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(results_dir) / 'mlflow.db').resolve()}"


def _flat(params: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


def _metric_key(name: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space : / ; '@' and '=' and ',' are not allowed.
    return name.replace("@", "_at_").replace("=", "_").replace(",", "__")


class Tracker:
    """A thin wrapper over ``MlflowClient`` (explicit run ids, no global active-run state)."""

    def __init__(self, results_dir: Path, experiment: str, uri: str | None = None,
                 enabled: bool = True):
        self.enabled = enabled
        self.uri = resolve_tracking_uri(results_dir, uri)
        if not enabled:
            return
        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        import mlflow
        from mlflow.tracking import MlflowClient

        Path(results_dir).mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            artifacts = None
            if self.uri.startswith("sqlite:"):
                artifacts = (Path(results_dir) / "mlartifacts").resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment,
                                                               artifact_location=artifacts)
        else:
            self.experiment_id = exp.experiment_id
        self._mlflow = mlflow

    def start(self, name: str, params: dict | None = None, parent: str | None = None,
              tags: dict | None = None) -> str | None:
        if not self.enabled:
            return None
        all_tags = {"mlflow.runName": name, **(tags or {})}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        run_id = run.info.run_id
        if params:
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in _flat(params).items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i:i + 100])
        return run_id

    def log_metrics(self, run_id: str | None, metrics: dict[str, float], step: int | None = None,
                    prefix: str = "") -> None:
        if not self.enabled or run_id is None:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_metric_key(prefix + k), float(v), now, step or 0)
                 for k, v in metrics.items() if isinstance(v, (int, float))]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i:i + 500])

    def log_files(self, run_id: str | None, files: list[Path]) -> None:
        if self.enabled and run_id is not None:
            for f in files:
                self.client.log_artifact(run_id, str(f))

    def set_tags(self, run_id: str | None, tags: dict[str, Any]) -> None:
        if self.enabled and run_id is not None:
            for k, v in tags.items():
                self.client.set_tag(run_id, k, str(v))

    def end(self, run_id: str | None, status: str = "FINISHED") -> None:
        if self.enabled and run_id is not None:
            self.client.set_terminated(run_id, status=status)
