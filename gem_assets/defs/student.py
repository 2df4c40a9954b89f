"""``student_model``, ``domain_assignments`` and ``domain_stats``: the distilled student labels every document.

The student (``lib/student/classifier.py``: ``StudentClassifier``) is trained on the teacher sample: texts
from ``documents``, targets the teacher's posterior (``GEM.predict_proba`` of the sample's
embeddings), with a seeded held-out split. It then labels every kept document of every
shard without embedding it (``domain_assignments``, one partition per shard, streamed in
batches), and ``domain_stats`` sums documents, bytes and tokens per domain over all shards.

Fingerprints (recorded in metadata and in the files as provenance; the data versions reported to
Dagster are derived from them, ``defs/versions.py``):

- student: the teacher's input fingerprint + the student parameters;
- a shard's assignments: the student fingerprint + the shard's ``documents`` fingerprint;
- stats: the assignments fingerprints of the shards included.
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
from gem_assets.defs._format import markdown_table
from gem_assets.defs.corpus import documents
from gem_assets.defs.partitions import shards_partitions
from gem_assets.defs.shards import shard_manifest
from gem_assets.defs.teacher import teacher_clusters
from gem_assets.defs.versions import STORE_RETRY, code_version, data_version
from gem_assets.resources.config import GemConfig
from gem_assets.resources.mlflow import MlflowTracker

__all__ = ["student_model", "domain_assignments", "domain_stats", "student_fingerprint",
           "assignments_fingerprint", "stats_fingerprint", "STUDENT_EXPERIMENT"]

#: MLflow experiment of the student's training runs.
STUDENT_EXPERIMENT = "gem-student"
#: The cross-shard quarantine as the student recorded it, beside its summary (what the assignments
#: and the later stages leave out; the copy for users is Layout.cross_shard_quarantine_path).
CROSS_SHARD_FILE = "cross_shard_duplicates.parquet"
_HISTORY_METRICS = ("loss", "train_agreement", "eval_loss", "eval_agreement", "seconds")


def student_fingerprint(settings: Settings, teacher_input_fp: str, duplicates_fp: str = "") -> str:
    """What determines the student's outputs: the teacher's inputs (incl. K), the student parameters
    and the cross-shard duplicates it recorded (which documents its assignments leave out)."""
    return fingerprint("student", teacher_input_fp, settings.student_params(), duplicates_fp)


def assignments_fingerprint(student_fp: str, documents_fp: str) -> str:
    """What determines a shard's assignments: the student and the shard's documents."""
    return fingerprint("assignments", student_fp, documents_fp)


def stats_fingerprint(assignment_fps: dict[str, str]) -> str:
    """What determines ``domain_stats``: the assignments of each included shard."""
    return fingerprint("domain_stats", sorted(assignment_fps.items()))


def _read_summary(directory, asset_name: str) -> dict:
    """``summary.json`` that ``asset_name`` wrote under ``directory``; a clear failure if it is missing."""
    from gem_assets.lib.io import storage

    path = directory / "summary.json"
    if not path.is_file():
        raise Failure(description=f"nothing under {directory}: materialize '{asset_name}' first",
                      allow_retries=False)
    return storage.read_json(path)


def _teacher_summary(layout) -> dict:
    return _read_summary(layout.teacher_outputs_dir, "teacher_clusters")


def _student_meta(layout) -> dict:
    return _read_summary(layout.student_outputs_dir, "student_model")


@asset(
    deps=[teacher_clusters, documents, shard_manifest],
    group_name="student",
    kinds={"pytorch", "safetensors", "mlflow"},
    code_version=code_version("student_model"),
    retry_policy=STORE_RETRY,
    check_specs=[
        AssetCheckSpec(
            "heldout_agreement", asset="student_model", blocking=False,
            description="Top-1 agreement of the student with the teacher on held-out sample documents is at "
            "least GEM_STUDENT_MIN_AGREEMENT (default 0.85). A warning: short or noisy texts can "
            "legitimately score lower, and the run still finishes.",
        )
    ],
)
def student_model(context: AssetExecutionContext, gem: GemConfig, mlflow: MlflowTracker) -> MaterializeResult:
    """The fastText-style student distilled from the GEM teacher on the teacher sample.

    Targets: the teacher's posterior on the sample's embeddings (KL loss). A seeded
    ``holdout`` share of the sample is kept out of training and measures agreement.
    Written to ``outputs/student/`` (``model/`` as safetensors + JSON, ``summary.json``,
    ``history.csv``, ``per_domain.csv``, ``heldout.parquet``, ``confusion.png``).
    """
    import numpy as np
    import polars as pl

    from gem_assets.lib.io import artifacts
    from gem_assets.lib.util import plots
    from gem_assets.lib.io import storage
    from gem_assets.lib.student import classifier
    from gem_assets.lib.student.agreement import confusion_matrix, confusion_png
    from gem_assets.lib.teacher.gem import GEM

    from gem_assets.defs import bad_shards

    settings = gem.settings()
    layout = settings.layout
    summary = _teacher_summary(layout)
    try:
        vectors, sample, sample_meta = artifacts.read_teacher_sample(layout)
    except FileNotFoundError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    # the student learns from the teacher sample's shards: those it left out, and any failed since
    from gem_assets.defs.shards import shard_hashes
    from gem_assets.lib.corpus.duplicates import cross_shard_duplicates

    hashes = shard_hashes(gem.shards())
    failed = bad_shards.failed_shards(gem, hashes)
    excluded = bad_shards.apply_policy(context, settings, "student_model", sample_meta.get("excluded", {}), failed)
    # ids across the current documents of every readable shard: a shard whose key sorts first keeps an id,
    # the later ones' documents with it are left out of the assignments and of every later stage
    doc_keys = [k for k, sha in hashes.items() if k not in failed
                and (artifacts.read_documents_meta(layout, k) or {}).get("shard_sha256") == sha
                and layout.documents_path(k).is_file()]
    duplicates = cross_shard_duplicates(
        doc_keys, lambda k: storage.read_parquet(layout.documents_path(k), columns=["row", "id"]))
    duplicates_fp = fingerprint("cross_shard_duplicates", duplicates.select("shard", "row", "id").rows())
    per_shard_dups = {k: int(n) for k, n in duplicates.group_by("shard").len().sort("shard").iter_rows()}
    if duplicates.height:
        context.log.warning(f"{duplicates.height} document(s) have an id that a shard with an earlier key kept: "
                            f"left out ({per_shard_dups}) -> {layout.cross_shard_quarantine_path}")
    teacher_fp = summary["params"]["input_fingerprint"]
    teacher = GEM.load(layout.teacher_model_dir)
    P = np.asarray(teacher.predict_proba(vectors), dtype=np.float64)
    k = int(P.shape[1])

    # texts of the sampled documents, in sample order: only those rows, shard by shard
    from gem_assets.lib.io.streaming import read_texts

    try:
        texts = read_texts(layout.documents_path, sample.select("shard", "id"))
    except FileNotFoundError as exc:
        raise Failure(description=f"no documents for a sampled shard ({exc}): materialize 'documents'",
                      allow_retries=False) from exc
    except ValueError as exc:
        raise Failure(description=f"sampled documents have no text in 'documents' ({exc}): re-materialize the "
                      "teacher", allow_retries=False) from exc
    n = len(texts)
    if n < 2:
        raise Failure(description=f"the teacher sample has {n} document(s); the student needs at least 2",
                      allow_retries=False)
    params = settings.student_params()
    rng = np.random.default_rng([settings.seed, 0x57D])
    perm = rng.permutation(n)
    n_hold = min(n - 1, max(1, int(round(params["holdout"] * n))))
    hold, train = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    model = classifier.StudentClassifier(k, dim=params["dim"], buckets=params["buckets"], epochs=params["epochs"],
                                  word_ngrams=params["word_ngrams"], random_state=settings.seed, device="auto")
    hold_texts = [texts[i] for i in hold]
    model.fit([texts[i] for i in train], P[train], eval_set=(hold_texts, P[hold]),
              callback=lambda r: context.log.info(
                  f"student epoch {r['epoch']}: loss {r['loss']:.4f}, held-out agreement {r['eval_agreement']:.3f}"))
    train_seconds = float(sum(h["seconds"] for h in model.history_))
    labels, conf = model.predict_with_confidence(hold_texts)
    t_labels = P[hold].argmax(axis=1)
    agreement = float(np.mean(labels == t_labels))
    cm = confusion_matrix(t_labels, labels, k)
    per_domain = pl.DataFrame({
        "domain": np.arange(k, dtype=np.int64),
        "heldout_docs": cm.sum(axis=1).astype(np.int64),
        "agreement": np.where(cm.sum(axis=1) > 0, np.diag(cm) / np.maximum(cm.sum(axis=1), 1), np.nan),
        "student_docs": cm.sum(axis=0).astype(np.int64),
    })
    fp = student_fingerprint(settings, teacher_fp, duplicates_fp)
    threshold = float(settings.student_min_agreement)
    record = {
        "fingerprint": fp, "teacher_input_fingerprint": teacher_fp, "params": params, "k": k,
        "n_sample": n, "n_train": int(train.size), "n_heldout": int(hold.size),
        "heldout_agreement": agreement, "train_seconds": train_seconds,
        "per_domain_agreement": per_domain["agreement"].fill_nan(None).to_list(),
        "teacher_hard_shares": summary["hard_shares"], "confusion": cm.tolist(),
        "min_agreement": threshold, "device": str(model._embedding.weight.device), "excluded": excluded,
        "cross_shard_duplicates": {"documents": duplicates.height, "per_shard": per_shard_dups,
                                   "fingerprint": duplicates_fp, "path": str(layout.cross_shard_quarantine_path)},
    }
    png = confusion_png(cm, title=f"student vs teacher, held out (n={hold.size}, agreement {agreement:.3f})")
    out = layout.student_outputs_dir
    history = pl.DataFrame(model.history_, infer_schema_length=None)
    heldout = sample[hold.tolist()].select("shard", "id").with_columns(
        pl.Series("teacher", t_labels.astype(np.int64)), pl.Series("student", labels),
        pl.Series("confidence", conf))
    with storage.atomic_dir(out) as tmp:
        model.save(tmp / "model")
        history.write_csv(tmp / "history.csv")
        per_domain.write_csv(tmp / "per_domain.csv")
        heldout.write_parquet(tmp / "heldout.parquet", compression="zstd")
        (tmp / "confusion.png").write_bytes(png)
        duplicates.write_parquet(tmp / CROSS_SHARD_FILE, compression="zstd")
        storage.write_json(tmp / "summary.json", record)  # last: its presence means a complete student
    storage.write_parquet(layout.cross_shard_quarantine_path, duplicates)  # the users' copy

    tracker = MlflowTracker(tracking_uri=mlflow.tracking_uri, experiment=STUDENT_EXPERIMENT, enabled=mlflow.enabled,
                            on_error=mlflow.on_error, probe_timeout_s=mlflow.probe_timeout_s)
    outcome = tracker.log_fit(
        layout, run_name=f"student-k{k}-{context.run.run_id[:8]}",
        params={**params, "k": k, "n_train": int(train.size), "n_heldout": int(hold.size), "fingerprint": fp},
        tags={"dagster.run_id": context.run.run_id, "dagster.asset_key": "student_model",
              "gem.profile": settings.profile},
        history=[{**h, "iteration": h["epoch"]} for h in model.history_], metric_keys=_HISTORY_METRICS,
        final_metrics={"heldout_agreement": agreement, "train_seconds": train_seconds},
        artifacts=[out / "confusion.png", out / "history.csv", out / "per_domain.csv", out / "summary.json"],
        log=context.log,
    )
    passed = agreement >= threshold
    if not passed:
        context.log.warning(f"student held-out agreement {agreement:.3f} is below {threshold} "
                            "(GEM_STUDENT_MIN_AGREEMENT)")
    check = AssetCheckResult(
        check_name="heldout_agreement", passed=bool(passed), severity=AssetCheckSeverity.WARN,
        metadata={"agreement": agreement, "threshold": threshold, "n_heldout": int(hold.size)},
        description=f"held-out top-1 agreement {agreement:.4f} vs threshold {threshold}",
    )
    per_md = per_domain.with_columns(pl.col("agreement").round(3))
    return MaterializeResult(
        metadata={
            "K": k, "n_train": int(train.size), "n_heldout": int(hold.size),
            "heldout_agreement": round(agreement, 4),
            "per_domain": MetadataValue.md(markdown_table(per_md)),
            "confusion": MetadataValue.md(plots.markdown_image(png, "student vs teacher confusion")),
            "final_train_loss": round(float(model.history_[-1]["loss"]), 5),
            "train_seconds": round(train_seconds, 3),
            "params": MetadataValue.json(params),
            "input_fingerprint": fp,
            "teacher_input_fingerprint": teacher_fp,
            "outputs": MetadataValue.path(str(out)),
            "excluded_shards": MetadataValue.json(excluded),
            "cross_shard_duplicates": duplicates.height,
            "cross_shard_duplicates_per_shard": MetadataValue.json(per_shard_dups),
            "mlflow_status": outcome.status, "mlflow_run_id": outcome.run_id or "", "mlflow_message": outcome.message,
        },
        data_version=DataVersion(data_version("student_model", fp)),
        check_results=[check],
    )


@asset(
    deps=[documents, student_model],
    partitions_def=shards_partitions,
    group_name="student",
    kinds={"pytorch", "parquet"},
    code_version=code_version("domain_assignments"),
    retry_policy=STORE_RETRY,
    check_specs=[
        AssetCheckSpec("assigned_once", asset="domain_assignments", blocking=True,
                       description="Every kept document of the shard has exactly one assignment, and no other id "
                       "has one (conservation against 'documents')."),
        AssetCheckSpec("share_drift", asset="domain_assignments", blocking=False,
                       description="KL(shard's domain shares || teacher's shares) is at most GEM_STUDENT_DRIFT_KL "
                       "(default 0.1 nats); a warning otherwise."),
    ],
)
def domain_assignments(context: AssetExecutionContext, gem: GemConfig) -> MaterializeResult:
    """Every kept document of the shard labelled by the student: ``id``, ``domain``, ``confidence``
    (plus ``n_bytes`` and ``n_tokens`` for the stats), streamed in batches, written to
    ``outputs/assignments/<shard>.parquet`` with ``<shard>.json`` beside it."""
    import numpy as np
    import polars as pl

    from gem_assets.lib.io import artifacts
    from gem_assets.lib.io import storage
    from gem_assets.lib.student import classifier, labeling
    from gem_assets.lib.student.agreement import share_kl

    key = context.partition_key
    settings = gem.settings()
    layout = settings.layout
    smeta = _student_meta(layout)
    docs_meta = artifacts.read_documents_meta(layout, key)
    if docs_meta is None or not layout.documents_path(key).is_file():
        raise Failure(description=f"no documents for shard {key!r}: materialize the 'documents' partition first",
                      allow_retries=False)
    model = classifier.StudentClassifier.load(layout.student_outputs_dir / "model", device="auto")
    dest = layout.assignments_path(key)
    # documents whose id a shard with an earlier key kept are not assigned (the student recorded them)
    skip = artifacts.read_cross_shard_duplicates(layout.student_outputs_dir / CROSS_SHARD_FILE).get(key, set())
    res = labeling.label_parquet(model, layout.documents_path(key), dest, skip_ids=skip)
    fp = assignments_fingerprint(smeta["fingerprint"], docs_meta["fingerprint"])
    k = model.n_classes
    counts = np.asarray(res["counts"], dtype=np.int64)
    shares = (counts / max(1, res["n"])).tolist()
    kl = share_kl(counts, smeta["teacher_hard_shares"]) if res["n"] else 0.0
    meta = {"shard": key, "fingerprint": fp, "student_fingerprint": smeta["fingerprint"],
            "documents_fingerprint": docs_meta["fingerprint"], "n": res["n"], "counts": res["counts"],
            "bytes": res["bytes"], "tokens": res["tokens"], "shares": shares, "kl_vs_teacher": kl,
            "seconds": res["seconds"], "docs_per_s": res["docs_per_s"], "cross_shard_duplicates": res["skipped"]}
    storage.write_json(layout.assignments_meta_path(key), meta)

    # checks, from the files written
    written = storage.read_parquet(dest, columns=["id"])["id"]
    kept = storage.read_parquet(layout.documents_path(key), columns=["id"])["id"]
    expected = kept.filter(~kept.is_in(pl.Series(sorted(skip), dtype=pl.String).implode()))
    dup = written.len() - written.n_unique()
    missing = expected.filter(~expected.is_in(written.implode())).len()
    extra = written.filter(~written.is_in(expected.implode())).len()
    once = dup == 0 and missing == 0 and extra == 0 and written.len() == expected.len() == \
        docs_meta["kept"] - res["skipped"]
    threshold = float(settings.student_drift_kl)
    drift_ok = kl <= threshold
    if not drift_ok:
        context.log.warning(f"shard {key}: domain shares differ from the teacher's by KL {kl:.4f} > {threshold} "
                            "(GEM_STUDENT_DRIFT_KL)")
    checks = [
        AssetCheckResult(check_name="assigned_once", passed=bool(once),
                         metadata={"kept": kept.len(), "assigned": written.len(), "duplicates": dup,
                                   "missing": missing, "unexpected": extra, "cross_shard_duplicates": res["skipped"]},
                         description=f"{kept.len()} kept, {res['skipped']} left out as cross-shard duplicates, "
                         f"{written.len()} assigned, {dup} duplicate, {missing} missing, {extra} unexpected"),
        AssetCheckResult(check_name="share_drift", passed=bool(drift_ok), severity=AssetCheckSeverity.WARN,
                         metadata={"kl": kl, "threshold": threshold},
                         description=f"KL(shard shares || teacher shares) = {kl:.4f} nats vs {threshold}"),
    ]
    table = pl.DataFrame({"domain": np.arange(k), "documents": counts, "share": np.round(shares, 4)})
    return MaterializeResult(
        metadata={
            "shard": key, "n_documents": res["n"], "docs_per_s": round(res["docs_per_s"], 1),
            "seconds": round(res["seconds"], 3), "kl_vs_teacher": round(kl, 5),
            "cross_shard_duplicates": res["skipped"],
            "shares": MetadataValue.md(markdown_table(table)),
            "fingerprint": fp, "path": MetadataValue.path(str(dest)), "dagster/row_count": res["n"],
        },
        data_version=DataVersion(data_version("domain_assignments", fp)),
        check_results=checks,
    )


@asset(
    deps=[domain_assignments, student_model, shard_manifest],
    group_name="student",
    kinds={"polars", "csv"},
    code_version=code_version("domain_stats"),
    retry_policy=STORE_RETRY,
    check_specs=[
        AssetCheckSpec("documents_conserved", asset="domain_stats", blocking=True,
                       description="The stats count every kept document of the included shards exactly once "
                       "(documents per domain sum to the kept documents)."),
    ],
)
def domain_stats(context: AssetExecutionContext, gem: GemConfig) -> MaterializeResult:
    """Documents, bytes (UTF-8) and tokens per domain over all shards.

    Tokens are whitespace-separated words (``len(text.split())``), a tokenizer-free count.
    Uses every current shard whose assignments were made by the current student from its
    current documents; others, and failed shards (``GEM_ON_BAD_SHARD``: ``defs/bad_shards``),
    are listed in ``excluded_shards``. Written to
    ``outputs/domain_stats/`` (``domain_stats.csv``, ``summary.json``).
    """
    import numpy as np
    import polars as pl

    from gem_assets.defs import bad_shards
    from gem_assets.lib.io import artifacts
    from gem_assets.lib.io import storage
    from gem_assets.lib.io import streaming

    settings = gem.settings()
    layout = settings.layout
    smeta = _student_meta(layout)
    k = int(smeta["k"])
    failed = bad_shards.failed_shards(gem)
    included, excluded = {}, {}
    for key in sorted(gem.shards()):
        if key in failed:
            continue
        docs_meta = artifacts.read_documents_meta(layout, key)
        ameta_path = layout.assignments_meta_path(key)
        if docs_meta is None:
            excluded[key] = "no documents"
            continue
        if not ameta_path.is_file() or not layout.assignments_path(key).is_file():
            excluded[key] = "not assigned yet"
            continue
        ameta = storage.read_json(ameta_path)
        if ameta["fingerprint"] != assignments_fingerprint(smeta["fingerprint"], docs_meta["fingerprint"]):
            excluded[key] = "assigned by another student or from other documents"
            continue
        included[key] = (ameta, docs_meta)
    excluded = bad_shards.apply_policy(context, settings, "domain_stats", excluded, failed)
    if not included:
        raise bad_shards.nothing_usable("domain_stats", "no shard has current assignments", excluded,
                                        "materialize the 'domain_assignments' partitions first")
    docs = np.zeros(k, dtype=np.int64)
    nbytes = np.zeros(k, dtype=np.int64)
    tokens = np.zeros(k, dtype=np.int64)
    for key, (ameta, _) in included.items():
        # sums from the assignment files themselves (the meta counts are only a cross-check), streamed
        # batch by batch from wherever GEM_HOME is (local folder or object store)
        columns = ["domain", "n_bytes", "n_tokens"]
        for batch in streaming.iter_selected_rows(layout.assignments_path(key), columns=columns):
            agg = batch.group_by("domain").agg(pl.len().alias("d"), pl.col("n_bytes").sum().alias("b"),
                                               pl.col("n_tokens").sum().alias("t"))
            idx = agg["domain"].to_numpy()
            docs[idx] += agg["d"].to_numpy()
            nbytes[idx] += agg["b"].to_numpy()
            tokens[idx] += agg["t"].to_numpy()
    # kept documents less those left out as cross-shard duplicates (not assigned)
    total_kept = int(sum(d["kept"] - int(a.get("cross_shard_duplicates", 0)) for a, d in included.values()))
    table = pl.DataFrame({
        "domain": np.arange(k, dtype=np.int64), "documents": docs, "bytes": nbytes, "tokens": tokens,
        "document_share": docs / max(1, docs.sum()), "token_share": tokens / max(1, tokens.sum()),
        "teacher_hard_share": np.asarray(smeta["teacher_hard_shares"], dtype=np.float64),
    })
    fp = stats_fingerprint({key: a["fingerprint"] for key, (a, _) in included.items()})
    out = layout.domain_stats_dir
    summary = {"fingerprint": fp, "shards": sorted(included), "excluded": excluded, "documents": int(docs.sum()),
               "bytes": int(nbytes.sum()), "tokens": int(tokens.sum()), "kept_documents": total_kept,
               "tokens_definition": "whitespace-separated words (len(text.split()))"}
    with storage.atomic_dir(out) as tmp:
        table.write_csv(tmp / "domain_stats.csv")
        storage.write_json(tmp / "summary.json", summary)
    conserved = int(docs.sum()) == total_kept
    check = AssetCheckResult(
        check_name="documents_conserved", passed=bool(conserved),
        metadata={"assigned": int(docs.sum()), "kept": total_kept},
        description=f"{int(docs.sum())} documents in the stats vs {total_kept} kept in {len(included)} shard(s) "
        "(less cross-shard duplicates)",
    )
    md = table.with_columns(pl.col("document_share", "token_share", "teacher_hard_share").round(4))
    return MaterializeResult(
        metadata={
            "documents": int(docs.sum()), "bytes": int(nbytes.sum()), "tokens": int(tokens.sum()),
            "tokens_definition": "whitespace-separated words",
            "domains": MetadataValue.md(markdown_table(md)),
            "shards": MetadataValue.json(sorted(included)), "excluded_shards": MetadataValue.json(excluded),
            "input_fingerprint": fp, "outputs": MetadataValue.path(str(out)),
        },
        data_version=DataVersion(data_version("domain_stats", fp)),
        check_results=[check],
    )
