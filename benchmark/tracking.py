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
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)


def resolve_tracking_uri(results_dir: Path, uri: str | None = None) -> str:
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(results_dir) / 'mlflow.db').resolve()}"


# The tracking-store schemes MLflow ships (a ``+driver`` suffix allowed: postgresql+psycopg2);
# another scheme is looked up among MLflow's plugins before it is refused.
KNOWN_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https",
                 "databricks", "databricks-uc", "uc")
CONNECT_TIMEOUT_S = 3.0  # an unreachable tracking server fails in seconds, not MLflow's retries


def _redact(uri: str) -> str:
    """``uri`` without the password of its netloc (error messages are printed)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def check_tracking_uri(uri: str, timeout: float = CONNECT_TIMEOUT_S) -> str:
    """``uri`` if MLflow can use it: a known scheme (or an installed MLflow plugin's) and, for
    an http(s) server, a TCP connection within ``timeout`` seconds; else a one-line
    :class:`~benchmark.errors.ConfigError`. MLflow is imported only for an unknown scheme."""
    from .errors import ConfigError

    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter: a local path
        scheme = ""
    if scheme.split("+")[0] not in KNOWN_SCHEMES:
        try:  # a scheme registered by an MLflow plugin (entry point) is accepted
            from mlflow.tracking._tracking_service.utils import _tracking_store_registry

            plugins = set(_tracking_store_registry._registry)
        except (ImportError, AttributeError):  # a private API: without it, only the known ones
            plugins = set()
        if scheme not in plugins:
            raise ConfigError(f"tracking URI {_redact(uri)!r}: unknown scheme {scheme!r} "
                              f"(MLflow knows {', '.join(s for s in KNOWN_SCHEMES if s)})")
    if scheme in ("http", "https"):
        import socket

        port = parts.port or (443 if scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
                pass
        except OSError as e:
            reason = e.strerror or type(e).__name__  # socket.timeout has no strerror
            raise ConfigError(f"tracking server {_redact(uri)} unreachable within {timeout:g} s "
                              f"({reason}); start it, or use --no-tracking") from None
    return uri


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
        check_tracking_uri(self.uri)
        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        import mlflow
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        from .errors import ConfigError

        try:
            from sqlalchemy.exc import SQLAlchemyError
        except ImportError:  # MLflow without its database stores
            SQLAlchemyError = MlflowException
        Path(results_dir).mkdir(parents=True, exist_ok=True)
        try:  # the first call reaches the store: a bad database path or server answers here
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(experiment)
        except (MlflowException, SQLAlchemyError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"tracking URI {_redact(self.uri)!r}: {first}") from None
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

    def mark_killed(self, tags: dict[str, Any], params: dict[str, Any] | None = None) -> list[str]:
        """End as ``KILLED`` every run of this experiment still ``RUNNING`` whose tags and
        params carry these values: the run of a process that died without ending it (``kill
        -9``), found again when ``--resume`` starts its twin. ``tags`` must hold
        ``config_hash``. Returns the ids marked; a no-op (``[]``) without tracking."""
        if not self.enabled:
            return []
        # the hash (hex) goes into the filter; the other values, free text, are compared here
        query = f"tags.config_hash = '{tags['config_hash']}' and attributes.status = 'RUNNING'"
        marked, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], query, max_results=1000,
                                           page_token=token)
            for run in page:
                if (all(run.data.tags.get(k) == str(v) for k, v in tags.items())
                        and all(run.data.params.get(k) == str(v)
                                for k, v in (params or {}).items())):
                    self.client.set_terminated(run.info.run_id, status="KILLED")
                    marked.append(run.info.run_id)
            token = page.token
            if not token:
                break
        if marked:
            log.info("marked %d stale RUNNING run(s) KILLED: %s", len(marked), ", ".join(marked))
        return marked
