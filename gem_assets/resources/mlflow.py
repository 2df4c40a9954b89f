"""The MLflow resource: a small ConfigurableResource around :class:`mlflow.MlflowClient`.

Every stage that logs to MLflow goes through it, each in its own experiment: the teacher
(``gem-teacher``, the resource's default), the student (``gem-student``), the taxonomy
(``gem-taxonomy``), the mixers (``gem-mixing``) and the mixture evaluation (``gem-evaluation``);
an asset makes a copy of the resource with its experiment's name.

Policy when the tracking store is unreachable (``on_error``): ``warn`` (default) logs a
warning, records ``mlflow_status`` in the asset's metadata and lets the asset materialize,
because its result is already computed and written; ``fail`` raises, failing the step
(its files are already written, but the materialization is not recorded).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Mapping, NamedTuple, Optional, Sequence

from dagster import ConfigurableResource

from gem_assets.config import Layout

__all__ = ["MlflowTracker", "TrackingOutcome"]


class TrackingOutcome(NamedTuple):
    """What happened to one MLflow logging attempt.

    ``status`` is ``logged``, ``disabled`` or ``unreachable``.
    """

    status: str
    tracking_uri: str
    run_id: Optional[str] = None
    message: str = ""


class MlflowTracker(ConfigurableResource):
    """Logs a stage's fit (parameters, per-step metrics, final metrics, files) as one MLflow run.

    Attributes
    ----------
    tracking_uri : str
        Empty: ``sqlite:///$GEM_STATE/mlflow.db`` (``GEM_STATE``: ``GEM_HOME`` when local;
        ``GEM_MLFLOW_TRACKING_URI``).
    experiment : str
        MLflow experiment name (``gem-teacher`` unless the asset sets its own).
    enabled : bool
        ``False`` skips MLflow entirely (``GEM_MLFLOW=0``).
    on_error : str
        ``warn`` or ``fail`` when the store cannot be reached (``GEM_MLFLOW_ON_ERROR``).
    probe_timeout_s : float
        Seconds allowed to the reachability probe of an HTTP store.
    """

    tracking_uri: str = ""
    experiment: str = "gem-teacher"
    enabled: bool = True
    on_error: str = "warn"
    probe_timeout_s: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "MlflowTracker":
        """The tracker configured by ``GEM_MLFLOW_TRACKING_URI``, ``GEM_MLFLOW`` and ``GEM_MLFLOW_ON_ERROR``."""
        env = os.environ if env is None else env
        return cls(
            tracking_uri=env.get("GEM_MLFLOW_TRACKING_URI", "").strip(),
            enabled=env.get("GEM_MLFLOW", "1").strip().lower() not in {"0", "false", "no", "off"},
            on_error=env.get("GEM_MLFLOW_ON_ERROR", "").strip().lower() or "warn",
        )

    def resolved_uri(self, layout: Layout) -> str:
        """The tracking URI, defaulting to the SQLite database in the local state folder (``GEM_STATE``)."""
        return self.tracking_uri or layout.mlflow_uri

    def log_fit(
        self,
        layout: Layout,
        *,
        run_name: str,
        params: Mapping[str, object],
        tags: Mapping[str, str],
        history: Sequence[Mapping[str, float]],
        metric_keys: Sequence[str],
        final_metrics: Mapping[str, float],
        artifacts: Sequence[Path],
        log=None,
    ) -> TrackingOutcome:
        """Log one fit as an MLflow run, applying the ``on_error`` policy.

        Parameters
        ----------
        layout : Layout
            For the default URI and artifact folder.
        run_name, params, tags, history, metric_keys, final_metrics, artifacts
            See :func:`gem_assets.lib.util.tracking.log_fit`; ``artifacts`` may lie on an object store
            (they are logged from temporary local copies).
        log : logger, optional
            Receives the warning when the store is unreachable.

        Returns
        -------
        TrackingOutcome

        Raises
        ------
        RuntimeError
            If the store is unreachable and ``on_error == "fail"``.
        """
        uri = self.resolved_uri(layout)
        if self.on_error not in ("warn", "fail"):
            raise ValueError(f"on_error must be 'warn' or 'fail', got {self.on_error!r} (GEM_MLFLOW_ON_ERROR)")
        if not self.enabled:
            return TrackingOutcome("disabled", uri, None, "MLflow logging disabled (GEM_MLFLOW=0)")
        from gem_assets.lib.io import storage
        from gem_assets.lib.util import tracking

        try:
            tracking.probe(uri, timeout_s=self.probe_timeout_s)
            with contextlib.ExitStack() as stack:  # artifacts on an object store: logged from local copies
                local = [stack.enter_context(storage.local_copy(p)) for p in artifacts]
                run_id = tracking.log_fit(
                    uri,
                    self.experiment,
                    run_name=run_name,
                    params=params,
                    tags=tags,
                    history=history,
                    metric_keys=metric_keys,
                    final_metrics=final_metrics,
                    artifacts=local,
                    artifact_root=layout.mlflow_artifacts,
                )
        except Exception as exc:  # any failure of the store: unreachable, locked, bad URI ...
            message = f"MLflow tracking store {uri} unreachable: {type(exc).__name__}: {exc}"
            if self.on_error == "fail":
                raise RuntimeError(message + " (GEM_MLFLOW_ON_ERROR=fail)") from exc
            if log is not None:
                log.warning(message + "; the asset is materialized without an MLflow run "
                            "(set GEM_MLFLOW_ON_ERROR=fail to fail instead)")
            return TrackingOutcome("unreachable", uri, None, message)
        return TrackingOutcome("logged", uri, run_id, f"MLflow run {run_id} in experiment {self.experiment!r}")
