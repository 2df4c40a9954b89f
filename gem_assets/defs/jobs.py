"""Asset jobs: ``gem_assets_job`` (every asset), the job ``make run`` (``gem_assets/run.py``) launches
with the asset selections Dagster's stale status reports MISSING or STALE, and one job per stage, to
launch a stage (or a backfill over shards) from the UI:

``shard_job``       ``documents`` + ``embeddings`` (per shard partition)
``teacher_job``     ``teacher_sample`` + ``teacher_clusters``
``student_job``     ``student_model``
``assign_job``      ``domain_assignments`` (per shard partition)
``stats_job``       ``domain_stats``
``taxonomy_job``    ``taxonomy``
``mixing_job``      ``proxy_corpus``, ``doremi_weights``, ``regmix_runs``, ``regmix_weights``, ``curated_mixture``
``evaluation_job``  ``mixture_evaluation``

The daemon's automation (``gem_assets/defs/automation.py``) and the UI's "Materialize" launch
runs of asset selections, not of these jobs. ``observe_shards`` is in ``gem_assets/defs/shards.py``.
"""

from dagster import AssetSelection, define_asset_job

from gem_assets.defs.corpus import documents
from gem_assets.defs.embeddings import embeddings
from gem_assets.defs.evaluation import mixture_evaluation
from gem_assets.defs.mixing import MIXING_ASSETS
from gem_assets.defs.student import domain_assignments, domain_stats, student_model
from gem_assets.defs.taxonomy import taxonomy
from gem_assets.defs.teacher import teacher_clusters, teacher_sample

__all__ = ["shard_job", "teacher_job", "student_job", "assign_job", "stats_job", "taxonomy_job", "evaluation_job",
           "mixing_job", "assets_job"]

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

student_job = define_asset_job(
    "student_job",
    selection=AssetSelection.assets(student_model),
    description="Distil the fastText-style student from the teacher on the teacher sample.",
)

assign_job = define_asset_job(
    "assign_job",
    selection=AssetSelection.assets(domain_assignments),
    description="Label every kept document of one shard with the student (one run per shard partition).",
)

stats_job = define_asset_job(
    "stats_job",
    selection=AssetSelection.assets(domain_stats),
    description="Documents, bytes and tokens per domain over all assigned shards.",
)

evaluation_job = define_asset_job(
    "evaluation_job",
    selection=AssetSelection.assets(mixture_evaluation),
    description="Mixture evaluation: held-out bits per byte of target LMs on every bucketization x mixer mixture.",
)

taxonomy_job = define_asset_job(
    "taxonomy_job",
    selection=AssetSelection.assets(taxonomy),
    description="GIS taxonomy: named, hierarchical domains with exemplars, dendrogram and 2-D map.",
)

mixing_job = define_asset_job(
    "mixing_job",
    selection=AssetSelection.assets(*MIXING_ASSETS),
    description="Mixture optimization: proxy corpus, DoReMi and RegMix weights, and the curated mixture.",
)

#: Every materializable asset: ``make run`` (gem_assets/run.py) runs it with an asset selection,
#: layer by layer, one run per shard partition for the shard assets, one run for the unpartitioned ones.
assets_job = define_asset_job(
    "gem_assets_job",
    selection=AssetSelection.all(),
    description="Every asset of the graph; make run selects the stale ones (per partition for shard assets).",
)
