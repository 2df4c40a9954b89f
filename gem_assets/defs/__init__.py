"""Dagster definitions of the code location (assembled in ``gem_assets/definitions.py``), split by domain.

Assets, by stage:

``partitions``   the dynamic ``shards`` partitions (one per shard file);
``shards``       the observable sources ``shard_files`` (a content hash per shard file as its
                 data version) and ``shard_manifest`` (one data version for all of them and the
                 per-shard assets' code versions), and the ``observe_shards`` job that observes both;
``corpus``       ``documents`` (per shard);
``embeddings``   ``embeddings`` (per shard);
``teacher``      ``teacher_sample`` and ``teacher_clusters``;
``student``      ``student_model``, ``domain_assignments`` (per shard) and ``domain_stats``;
``taxonomy``     ``taxonomy``;
``mixing``       ``proxy_corpus``, ``doremi_weights``, ``regmix_runs``, ``regmix_weights`` and
                 ``curated_mixture``;
``evaluation``   ``mixture_evaluation``.

Around them:

``versions``     code versions (a logic version and a hash of the settings each asset depends
                 on) and data versions: what Dagster's staleness compares;
``automation``   one automation condition per asset, the ``gem_automation`` sensor that evaluates
                 them and the ``shard_sensor`` that registers new shard files (both running by
                 default);
``jobs``         ``gem_assets_job`` (every asset; ``make run`` runs it with asset selections) and
                 eight per-stage asset jobs for the UI: ``shard_job`` (``documents`` +
                 ``embeddings``), ``teacher_job``, ``student_job``, ``assign_job``
                 (``domain_assignments``), ``stats_job``, ``taxonomy_job``, ``mixing_job`` and
                 ``evaluation_job``;
``executors``    the executor chosen by ``GEM_EXECUTOR`` and the launching of runs from a code
                 pointer (``run_jobs``);
``_compat``      the only import of Dagster's private API (for the Dask executor), pinned to the
                 Dagster release it was written for;
``_format``      Markdown tables for materialization metadata.
"""
