"""MLflow logging of a teacher fit, through :class:`mlflow.MlflowClient`.

:func:`probe` checks quickly (seconds, not MLflow's minutes of HTTP retries) that a
tracking store can be reached; :func:`log_fit` logs one fit as one MLflow run: parameters,
tags, per-iteration metrics with their step, and artifact files.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Mapping, Sequence
from urllib.parse import urlparse

__all__ = ["TrackingUnavailable", "probe", "log_fit"]

_MAX_BATCH = 1000  # MLflow accepts at most 1000 metrics per log_batch
_MAX_PARAM = 6000
_MAX_TAG = 5000


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking store cannot be reached or written."""


def probe(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Check that a tracking store looks reachable, quickly.

    ``sqlite:///path``: the folder of the database must exist and be writable.
    ``http(s)://host:port``: a TCP connection and ``GET /health`` must succeed within
    ``timeout_s``. Other schemes are not probed.

    Raises
    ------
    TrackingUnavailable
        With the reason.
    """
    parsed = urlparse(tracking_uri)
    scheme = parsed.scheme.lower()
    if scheme == "sqlite":
        db = tracking_uri[len("sqlite:///"):] if tracking_uri.startswith("sqlite:///") else parsed.path
        if db in ("", ":memory:"):
            return
        folder = Path(db if db.startswith("/") else os.path.abspath(db)).parent
        if not folder.is_dir():
            raise TrackingUnavailable(f"MLflow database folder {folder} does not exist ({tracking_uri})")
        if not os.access(folder, os.W_OK):
            raise TrackingUnavailable(f"MLflow database folder {folder} is not writable ({tracking_uri})")
        return
    if scheme in ("http", "https"):
        host = parsed.hostname or "localhost"
        port = parsed.port or (443 if scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                pass
        except OSError as exc:
            raise TrackingUnavailable(f"cannot connect to MLflow at {host}:{port} ({exc})") from exc
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - user's URI
                if resp.status >= 400:
                    raise TrackingUnavailable(f"MLflow health check {url} answered HTTP {resp.status}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise TrackingUnavailable(f"MLflow health check {url} failed ({exc})") from exc


def _is_local(tracking_uri: str) -> bool:
    return urlparse(tracking_uri).scheme.lower() in ("sqlite", "")


def log_fit(
    tracking_uri: str,
    experiment: str,
    *,
    run_name: str,
    params: Mapping[str, object],
    tags: Mapping[str, str],
    history: Sequence[Mapping[str, float]],
    metric_keys: Iterable[str],
    final_metrics: Mapping[str, float] | None = None,
    artifacts: Sequence[str | os.PathLike] = (),
    artifact_root: str | os.PathLike | None = None,
) -> str:
    """Log one fit as one MLflow run and return its run id.

    Parameters
    ----------
    tracking_uri : str
        E.g. ``sqlite:///data/mlflow.db`` or ``http://127.0.0.1:5000``.
    experiment : str
        Experiment name (created when missing).
    run_name : str
        Display name of the run.
    params : mapping
        Logged as parameters (values as strings).
    tags : mapping
        Logged as tags.
    history : sequence of dict
        One record per iteration; ``iteration`` (or the position) is the step.
    metric_keys : iterable of str
        Which fields of each record to log.
    final_metrics : mapping, optional
        Logged once, without step.
    artifacts : sequence of path
        Files logged as artifacts.
    artifact_root : path, optional
        Artifact location of a newly created experiment (local stores only).

    Returns
    -------
    str
        The MLflow run id.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = None
        if artifact_root is not None and _is_local(tracking_uri):
            Path(artifact_root).mkdir(parents=True, exist_ok=True)
            location = Path(artifact_root).resolve().as_uri()
        exp_id = client.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    run = client.create_run(exp_id, run_name=run_name, tags={k: str(v)[:_MAX_TAG] for k, v in tags.items()})
    run_id = run.info.run_id
    status = "FAILED"
    try:
        client.log_batch(run_id, params=[Param(str(k), str(v)[:_MAX_PARAM]) for k, v in params.items()])
        now = int(time.time() * 1000)
        keys = list(metric_keys)
        metrics = []
        for pos, rec in enumerate(history):
            step = int(rec.get("iteration", pos))
            for key in keys:
                value = rec.get(key)
                if value is None:
                    continue
                metrics.append(Metric(key, float(value), now, step))
        for key, value in (final_metrics or {}).items():
            if value is not None:
                metrics.append(Metric(f"final_{key}", float(value), now, 0))
        for i in range(0, len(metrics), _MAX_BATCH):
            client.log_batch(run_id, metrics=metrics[i : i + _MAX_BATCH])
        for path in artifacts:
            client.log_artifact(run_id, str(path))
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
    return run_id
