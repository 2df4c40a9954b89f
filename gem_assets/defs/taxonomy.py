"""``taxonomy``: named, hierarchical, interpretable GEM domains (GIS), with pictures.

Reads the fitted teacher, every shard's ``documents``, its student ``domain_assignments`` and its
``embeddings``, streams them through ``lib.taxonomy.gis.collect_term_stats`` (one shard at a time, two
passes) and writes:

- ``outputs/taxonomy.json``: per domain its id, name, top terms with GIS scores, share, concentration,
  exemplars (id, posterior, snippet) and parent; the tree (the share-weighted spherical merges of
  ``lib.taxonomy.build.agglomerate``, internal nodes named by GIS of the merged domains, the merges also
  as a linkage matrix in scipy's layout); NPMI coherence and distinctiveness of the GIS names and of
  c-TF-IDF's on the same domains;
- ``outputs/taxonomy/``: ``taxonomy.md``, ``dendrogram.png`` and ``domain_map.png``, both labelled
  ``"<id>: <GIS name>"``.

Fingerprint: the teacher's input fingerprint, the assignments (and embeddings) fingerprint of each
included shard, and the taxonomy parameters (provenance; the data version is derived from it).
"""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from gem_assets.config import Settings, fingerprint
from gem_assets.defs.corpus import documents
from gem_assets.defs.embeddings import embeddings
from gem_assets.defs.shards import shard_manifest
from gem_assets.defs.student import (_student_meta, _teacher_summary, assignments_fingerprint, domain_assignments,
                                     student_model)
from gem_assets.defs.teacher import teacher_clusters
from gem_assets.defs.versions import STORE_RETRY, code_version, data_version
from gem_assets.resources.config import GemConfig
from gem_assets.resources.mlflow import MlflowTracker

__all__ = ["taxonomy", "taxonomy_inputs", "taxonomy_fingerprint", "TAXONOMY_EXPERIMENT"]

#: MLflow experiment of the taxonomy runs.
TAXONOMY_EXPERIMENT = "gem-taxonomy"


def taxonomy_inputs(layout, keys, failed=()) -> tuple[dict[str, dict], dict[str, str]]:
    """Shards whose assignments are current (made by the current student from their current documents),
    leaving out the keys of ``failed`` shards (``defs/bad_shards``).

    Returns
    -------
    included : dict
        Shard key -> ``{"assignments": fp, "embeddings": fp or None}`` (embeddings only when made
        from the shard's current documents).
    excluded : dict
        Shard key -> reason.
    """
    from gem_assets.lib.io import artifacts
    from gem_assets.lib.io import storage

    spath = layout.student_outputs_dir / "summary.json"
    if not spath.is_file():
        return {}, {key: "no student" for key in keys}
    student_fp = storage.read_json(spath)["fingerprint"]
    included, excluded = {}, {}
    for key in sorted(keys):
        if key in failed:
            continue
        docs_meta = artifacts.read_documents_meta(layout, key)
        apath = layout.assignments_meta_path(key)
        if docs_meta is None:
            excluded[key] = "no documents"
        elif not apath.is_file() or not layout.assignments_path(key).is_file():
            excluded[key] = "not assigned yet"
        elif storage.read_json(apath).get("fingerprint") != assignments_fingerprint(student_fp,
                                                                                    docs_meta["fingerprint"]):
            excluded[key] = "assigned by another student or from other documents"
        else:
            emeta = artifacts.read_embeddings_meta(layout, key) or {}
            current = emeta.get("documents_fingerprint") == docs_meta["fingerprint"]
            included[key] = {"assignments": storage.read_json(apath)["fingerprint"],
                             "embeddings": emeta.get("fingerprint") if current else None}
    return included, excluded


def taxonomy_fingerprint(settings: Settings, teacher_input_fp: str, included: dict[str, dict]) -> str:
    """What determines the taxonomy: the teacher, each included shard's inputs and the parameters."""
    return fingerprint("taxonomy", teacher_input_fp, sorted(included.items()), settings.taxonomy_params())


@asset(
    deps=[teacher_clusters, domain_assignments, embeddings, documents, student_model, shard_manifest],
    group_name="taxonomy",
    kinds={"json", "mlflow"},
    code_version=code_version("taxonomy"),
    retry_policy=STORE_RETRY,
    check_specs=[
        AssetCheckSpec("named_domains", asset="taxonomy",
                       description="Every domain and every internal node of the tree has a non-empty name made "
                       "of GIS top terms."),
        AssetCheckSpec("no_stop_words", asset="taxonomy",
                       description="No top term of any node is, or contains, a stop word or a digit."),
        AssetCheckSpec("exemplars", asset="taxonomy", blocking=False,
                       description="Every domain has at least one exemplar document (a warning: a domain with "
                       "no embedded document has none)."),
    ],
)
def taxonomy(context: AssetExecutionContext, gem: GemConfig, mlflow: MlflowTracker) -> MaterializeResult:
    """GIS names, a share-weighted spherical tree and exemplars for the GEM domains.

    Written to ``outputs/taxonomy.json`` (and ``outputs/taxonomy/``: Markdown, dendrogram, 2-D map).
    """
    import numpy as np

    from gem_assets.lib.taxonomy import ctfidf
    from gem_assets.lib.taxonomy import gis
    from gem_assets.lib.util import plots
    from gem_assets.lib.io import storage
    from gem_assets.lib.taxonomy import build as tx
    from gem_assets.lib.teacher.gem import GEM

    settings = gem.settings()
    layout = settings.layout
    teacher_fp = _teacher_summary(layout)["params"]["input_fingerprint"]
    smeta = _student_meta(layout)
    from gem_assets.defs import bad_shards

    failed = bad_shards.failed_shards(gem)
    included, excluded = taxonomy_inputs(layout, list(gem.shards()), failed)
    excluded = bad_shards.apply_policy(context, settings, "taxonomy", excluded, failed)
    if not included:
        raise bad_shards.nothing_usable("taxonomy", "no shard has current assignments", excluded,
                                        "materialize the 'domain_assignments' partitions first")
    keys = sorted(included)
    params = settings.taxonomy_params()
    from gem_assets.defs.student import CROSS_SHARD_FILE
    from gem_assets.lib.io import artifacts

    skip = artifacts.read_cross_shard_duplicates(layout.student_outputs_dir / CROSS_SHARD_FILE)  # not assigned
    geometry = gis.TeacherGeometry.from_gem(GEM.load(layout.teacher_model_dir))
    if geometry.k != int(smeta["k"]):
        raise Failure(description=f"the teacher has {geometry.k} domains but the student {smeta['k']}: "
                      "re-materialize 'student_model'", allow_retries=False)
    try:
        stats = gis.collect_term_stats(lambda: tx.shard_batches(layout, keys, skip), geometry, min_df=params["min_df"],
                                       max_terms=params["max_terms"], bigrams=params["bigrams"],
                                       n_exemplars=params["exemplars"], count_capacity=params["count_capacity"],
                                       posteriors=[params["posterior"]], progress=True)
    except ValueError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    fp = taxonomy_fingerprint(settings, teacher_fp, included)
    tax = tx.build_taxonomy(stats, geometry, posterior=params["posterior"], n_top=params["top_terms"],
                            name_terms=params["name_terms"], params=params)
    ct = gis.top_terms(ctfidf.ctfidf(stats.term_freq), stats.vocabulary, params["top_terms"])
    tops = {"gis": [[t["term"] for t in d["top_terms"]] for d in tax["domains"]],
            "ctfidf": [[t for t, _ in row] for row in ct]}
    measurable = all(len(v) >= 2 for lists in tops.values() for v in lists)
    quality = tx.name_quality(tops, lambda: tx.shard_texts(layout, keys, skip)) if measurable else {}
    tax.update(fingerprint=fp, teacher_input_fingerprint=teacher_fp, shards=keys, excluded_shards=excluded,
               quality=quality, ctfidf_top_terms=tops["ctfidf"])

    labels = [f"{d['id']}: {d['name']}" for d in tax["domains"]]
    dendro = plots.taxonomy_dendrogram(tax["tree"]["linkage"], labels,
                                       title=f"GEM domain tree (K={tax['k']}, {stats.n_documents} documents)")
    dmap = plots.domain_map(geometry.means, [d["share"] for d in tax["domains"]], labels)
    md = tx.taxonomy_markdown(tax)
    out = layout.taxonomy_dir
    with storage.atomic_dir(out) as tmp:
        (tmp / "dendrogram.png").write_bytes(dendro)
        (tmp / "domain_map.png").write_bytes(dmap)
        (tmp / "taxonomy.md").write_text(md, encoding="utf-8")
    storage.write_json(layout.taxonomy_path, tax)  # last: its fingerprint means a complete taxonomy

    final = {"n_documents": stats.n_documents, "n_embedded": stats.n_embedded,
             "vocabulary_size": len(stats.vocabulary)}
    for method, q in quality.items():
        final[f"{method}_npmi"] = q["npmi"]
        final[f"{method}_distinctiveness"] = q["distinctiveness"]
    tracker = MlflowTracker(tracking_uri=mlflow.tracking_uri, experiment=TAXONOMY_EXPERIMENT, enabled=mlflow.enabled,
                            on_error=mlflow.on_error, probe_timeout_s=mlflow.probe_timeout_s)
    outcome = tracker.log_fit(
        layout, run_name=f"taxonomy-k{tax['k']}-{context.run.run_id[:8]}",
        params={**params, "k": tax["k"], "fingerprint": fp, "n_shards": len(keys)},
        tags={"dagster.run_id": context.run.run_id, "dagster.asset_key": "taxonomy", "gem.profile": settings.profile},
        history=[], metric_keys=(), final_metrics=final,
        artifacts=[layout.taxonomy_path, out / "taxonomy.md", out / "dendrogram.png", out / "domain_map.png"],
        log=context.log,
    )

    nodes = list(tax["domains"]) + list(tax["tree"]["nodes"])
    unnamed = [n["id"] for n in nodes if not n["top_terms"]]
    bad = tx.stop_words_in(tax)
    no_ex = [d["id"] for d in tax["domains"] if not d["exemplars"]]
    checks = [
        AssetCheckResult(check_name="named_domains", passed=not unnamed, metadata={"unnamed": unnamed},
                         description=f"{len(nodes) - len(unnamed)} of {len(nodes)} nodes named by GIS terms"),
        AssetCheckResult(check_name="no_stop_words", passed=not bad,
                         metadata={"offending": MetadataValue.json([list(b) for b in bad[:20]])},
                         description=f"{len(bad)} top term(s) with a stop word or digit"),
        AssetCheckResult(check_name="exemplars", passed=not no_ex, severity=AssetCheckSeverity.WARN,
                         metadata={"without_exemplars": no_ex},
                         description=f"{len(no_ex)} domain(s) without an exemplar"),
    ]
    qtable = "\n".join(["| names | mean NPMI (top-10) | distinctiveness |", "|---|---|---|"]
                       + [f"| {m} | {q['npmi']:.4f} | {q['distinctiveness']:.4f} |" for m, q in quality.items()])
    return MaterializeResult(
        metadata={
            "K": tax["k"], "n_documents": stats.n_documents, "n_embedded": stats.n_embedded,
            "vocabulary_size": len(stats.vocabulary), "shards": MetadataValue.json(keys),
            "excluded_shards": MetadataValue.json(excluded),
            "taxonomy": MetadataValue.md(md),
            "name_quality": MetadataValue.md(qtable),
            "dendrogram": MetadataValue.md(plots.markdown_image(dendro, "GEM domain tree")),
            "domain_map": MetadataValue.md(plots.markdown_image(dmap, "GEM domains, 2-D map")),
            "min_share": float(np.min([d["share"] for d in tax["domains"]])),
            "input_fingerprint": fp, "path": MetadataValue.path(str(layout.taxonomy_path)),
            "mlflow_status": outcome.status, "mlflow_run_id": outcome.run_id or "", "mlflow_message": outcome.message,
        },
        data_version=DataVersion(data_version("taxonomy", fp)),
        check_results=checks,
    )
