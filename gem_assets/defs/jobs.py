"""Jobs: ``shard_job`` (one shard: documents + embeddings) and ``teacher_job``."""

from dagster import AssetSelection, define_asset_job

from gem_assets.defs.corpus import documents
from gem_assets.defs.embeddings import embeddings
from gem_assets.defs.teacher import teacher_clusters, teacher_sample

__all__ = ["shard_job", "teacher_job"]

shard_job = define_asset_job(
    "shard_job",
    selection=AssetSelection.assets(documents, embeddings),
    description="Validate and embed one shard (one run per shard partition).",
)

teacher_job = define_asset_job(
    "teacher_job",
    selection=AssetSelection.assets(teacher_sample, teacher_clusters),
    description="Draw the stratified teacher sample and fit the GEM teacher on it.",
)
