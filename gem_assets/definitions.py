"""The Dagster code location: ``dagster dev -m gem_assets.definitions`` (or ``make ui``).

Loading this module reads the ``GEM_*`` environment variables and nothing else: the
default corpus is written and the teacher model loaded only when a run needs them.
"""

from __future__ import annotations

from dagster import Definitions, ExecutorDefinition

from gem_assets.defs.automation import automation_sensors, with_automation
from gem_assets.defs.versions import with_code_versions
from gem_assets.defs.corpus import documents
from gem_assets.defs.embeddings import embeddings
from gem_assets.defs.evaluation import mixture_evaluation
from gem_assets.defs.executors import executor_from_env
from gem_assets.defs.jobs import (assets_job, assign_job, evaluation_job, mixing_job, shard_job, stats_job, student_job,
                                  taxonomy_job, teacher_job)
from gem_assets.defs.mixing import MIXING_ASSETS
from gem_assets.defs.shards import observe_shards, shard_files, shard_manifest
from gem_assets.defs.student import domain_assignments, domain_stats, student_model
from gem_assets.defs.taxonomy import taxonomy
from gem_assets.defs.teacher import teacher_clusters, teacher_sample
from gem_assets.resources import GemConfig, MlflowTracker, SentenceTransformerEmbedder

__all__ = ["ASSETS", "build_definitions", "defs"]

#: Every materializable asset of the graph, upstream first (``shard_files`` and ``shard_manifest``,
#: the observable sources they start from, are added by :func:`build_definitions`).
ASSETS = [documents, embeddings, teacher_sample, teacher_clusters, student_model, domain_assignments, domain_stats,
          taxonomy, mixture_evaluation, *MIXING_ASSETS]


def build_definitions(
    gem: GemConfig | None = None,
    embedder: SentenceTransformerEmbedder | None = None,
    mlflow: MlflowTracker | None = None,
    executor: ExecutorDefinition | None = None,
) -> Definitions:
    """The code location's definitions with the given resources (default: from the environment).

    Parameters
    ----------
    gem : GemConfig, optional
        Settings; default :meth:`GemConfig.from_env`.
    embedder : SentenceTransformerEmbedder, optional
        Teacher embedder; default :meth:`SentenceTransformerEmbedder.from_env`.
    mlflow : MlflowTracker, optional
        MLflow logging; default :meth:`MlflowTracker.from_env`.
    executor : ExecutorDefinition, optional
        How steps execute; default from ``GEM_EXECUTOR`` / ``GEM_MAX_CONCURRENT``
        (``in_process`` unless set: see ``gem_assets/defs/executors.py`` and docs/scaling.md).

    Returns
    -------
    Definitions
    """
    gem = gem or GemConfig.from_env()
    return Definitions(
        assets=[shard_files, shard_manifest, *with_automation(with_code_versions(ASSETS, gem.settings()))],
        jobs=[observe_shards, shard_job, teacher_job, student_job, assign_job, stats_job, taxonomy_job, evaluation_job,
              mixing_job, assets_job],
        sensors=automation_sensors([observe_shards]),
        resources={
            "gem": gem,
            "embedder": embedder or SentenceTransformerEmbedder.from_env(),
            "mlflow": mlflow or MlflowTracker.from_env(),
        },
        # default in_process: steps run one after another in one process, the model loads once per
        # run; GEM_EXECUTOR=multiprocess|dask|k8s runs steps in processes, on Dask or as k8s Jobs
        executor=executor or executor_from_env(),
    )


defs = build_definitions()
