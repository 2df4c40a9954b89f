"""``make run``: materialize the asset graph on the configured corpus, incrementally.

``python -m gem_assets.run`` (what ``make run`` calls):

1. resolves the corpus (``GEM_CORPUS``; unset: the BBC News default corpus, written once
   under ``$GEM_HOME/corpus/``) and registers a ``shards`` partition per shard file;
2. runs ``shard_job`` (documents + embeddings) for each shard that is new or whose bytes,
   parameters or embedder changed, one run per shard (a bad shard fails its own run only);
3. runs ``teacher_job`` (teacher sample + GEM fit) when its inputs changed;
4. runs ``student_job`` (the distilled student) when the teacher or the student parameters
   changed, ``assign_job`` (student labels) for each shard whose student or documents changed,
   and ``stats_job`` (per-domain stats) when any assignment changed; then ``taxonomy_job`` (GIS
   names, tree, exemplars) when the teacher or any assignment changed; then ``mixing_job`` (proxy
   corpus, DoReMi and RegMix weights, curated mixture) when the stats or the mixing parameters changed;
5. runs ``evaluation_job`` (the mixture evaluation) when its inputs or parameters changed;
6. prints where the outputs are.

Runs are recorded in a persistent Dagster instance at ``$GEM_STATE/dagster`` (``DAGSTER_HOME``;
``GEM_STATE`` defaults to ``GEM_HOME`` when it is a local folder), the one ``make ui`` opens, so
everything done here shows up there. ``GEM_HOME`` may be an object-store URL (``s3://...``):
every asset's outputs then go there, the instance and the MLflow store stay local.
Re-running with nothing changed recomputes nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TextIO

__all__ = ["run_pipeline", "open_instance", "prepare_dagster_home", "main"]

_QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def _failure_message(result) -> str:
    """The first step failure of an in-process run, as one line."""
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            if data is not None and data.user_failure_data is not None and data.user_failure_data.description:
                return data.user_failure_data.description
            if data is not None and data.error is not None:
                return data.error.message.strip().splitlines()[-1] if data.error.message else data.error.cls_name
    return "run failed (see the run's logs in the UI)"


#: How runs are launched (set by :func:`run_pipeline` on every call): ``recon`` is the code
#: pointer runs are launched from when ``GEM_EXECUTOR`` is not ``in_process`` (else ``None``),
#: ``parallel`` how many shard runs go at once (see gem_assets/defs/executors.py).
_DISPATCH: dict = {"recon": None, "parallel": 1}


def _set_dispatch(defs_given: bool, recon_repo, out: TextIO) -> None:
    from gem_assets.defs.executors import ExecutionSettings

    execution = ExecutionSettings.from_env()
    recon = None
    if execution.needs_reconstructable:
        if recon_repo is None and not defs_given:
            from dagster._core.definitions.reconstruct import ReconstructableRepository

            recon_repo = ReconstructableRepository.for_module("gem_assets.definitions", "defs",
                                                              working_directory=os.getcwd())
        if recon_repo is None:
            print(f"GEM_EXECUTOR={execution.executor} needs a code pointer to the definitions; "
                  "running in process", file=out, flush=True)
        recon = recon_repo
    _DISPATCH.update(recon=recon, parallel=execution.parallel_runs if recon is not None else 1)


def _execute(defs, job_name: str, instance, failed: dict, label: str, partition_key=None) -> bool:
    """Run one job; on failure record its first step failure under ``failed[label]``.

    In process, or (``GEM_EXECUTOR`` other than ``in_process``) launched from the code pointer
    with the job's own executor.
    """
    if _DISPATCH["recon"] is not None:
        from gem_assets.defs.executors import JobRequest, run_jobs

        message = run_jobs(_DISPATCH["recon"], instance, [JobRequest(job_name, label, partition_key)],
                           run_config=_QUIET_RUN_CONFIG, tags={"gem/launched_by": "gem_assets.run"})[label]
        if message is not None:
            failed[label] = message
        return message is None
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance, partition_key=partition_key, raise_on_error=False,
        run_config=_QUIET_RUN_CONFIG, tags={"gem/launched_by": "gem_assets.run"},
    )
    if not result.success:
        failed[label] = _failure_message(result)
    return result.success


def _execute_shards(defs, job_name: str, instance, failed: dict, stale: dict, what: str, label, out: TextIO) -> dict:
    """Run ``job_name`` for each stale shard (``stale``: key to reason), ``_DISPATCH["parallel"]``
    at a time; failures go into ``failed`` under ``label(key)``. Returns key to success."""
    parallel = _DISPATCH["parallel"]
    for i, (key, reason) in enumerate(stale.items(), 1):
        if parallel > 1:  # all at once: announce them all first
            print(f"[{i}/{len(stale)}] shard {key}: {reason} -> {what}", file=out, flush=True)
    ok: dict = {}
    if parallel > 1 and len(stale) > 1:
        from gem_assets.defs.executors import JobRequest, run_jobs

        print(f"    {len(stale)} runs, {parallel} at a time ({job_name}, GEM_EXECUTOR=multiprocess)", file=out, flush=True)
        labels = {label(key): key for key in stale}
        results = run_jobs(_DISPATCH["recon"], instance, [JobRequest(job_name, lb, k) for lb, k in labels.items()],
                           parallel=parallel, run_config=_QUIET_RUN_CONFIG,
                           tags={"gem/launched_by": "gem_assets.run"})
        for lb, message in results.items():
            ok[labels[lb]] = message is None
            if message is not None:
                failed[lb] = message
                print(f"    FAILED {labels[lb]}: {message}", file=out, flush=True)
        return {key: ok[key] for key in stale}
    for i, (key, reason) in enumerate(stale.items(), 1):
        if parallel <= 1:
            print(f"[{i}/{len(stale)}] shard {key}: {reason} -> {what}", file=out, flush=True)
        ok[key] = _execute(defs, job_name, instance, failed, label(key), partition_key=key)
        if not ok[key]:
            print(f"    FAILED: {failed[label(key)]}", file=out, flush=True)
    return ok


def prepare_dagster_home(dagster_home: Path | None = None) -> Path:
    """Create the (local) Dagster instance folder and return it.

    Default: ``Layout.dagster_home`` of the environment's settings (``$GEM_STATE/dagster``;
    ``GEM_STATE`` defaults to ``GEM_HOME`` when local). A ``dagster.yaml`` turning telemetry off
    is written when the folder has none. ``make ui`` runs ``python -m gem_assets.run
    --dagster-home`` to point ``dagster dev`` at the same folder as ``make run``.
    """
    if dagster_home is None:
        from gem_assets.config import Settings

        dagster_home = Settings.from_env().layout.dagster_home
    dagster_home = Path(dagster_home)
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():  # this project runs offline: no usage statistics are sent
        config.write_text("# written by gem_assets.run; see https://docs.dagster.io/about/telemetry\n"
                          "telemetry:\n  enabled: false\n")
    return dagster_home


def open_instance(dagster_home: Path):
    """The persistent Dagster instance under ``dagster_home`` (sets ``DAGSTER_HOME``); see
    :func:`prepare_dagster_home`."""
    from dagster import DagsterInstance

    os.environ["DAGSTER_HOME"] = str(prepare_dagster_home(dagster_home))
    return DagsterInstance.get()


#: Stages after which ``run_pipeline(until=...)`` / ``--until`` can stop.
STAGES = ("stats", "taxonomy", "mixing", "evaluation")


def run_pipeline(defs=None, instance=None, out: TextIO | None = None, recon_repo=None,
                 until: str = "evaluation") -> dict:
    """Bring every asset of the graph up to date and return a summary.

    Parameters
    ----------
    defs : Definitions, optional
        Default: :data:`gem_assets.definitions.defs` (resources from the environment).
    instance : DagsterInstance, optional
        Default: the persistent instance at ``$GEM_STATE/dagster`` (``Layout.dagster_home``).
    out : text stream, optional
        Where the summary is printed (default stdout; ``None`` from tests prints to stdout).
    recon_repo : ReconstructableRepository, optional
        Code pointer to ``defs`` for ``GEM_EXECUTOR`` other than ``in_process`` (runs are then
        launched from it, shard runs ``GEM_MAX_CONCURRENT`` at a time with ``multiprocess``);
        default: ``gem_assets.definitions:defs`` when ``defs`` is not given.
    until : {"stats", "taxonomy", "mixing", "evaluation"}, default "evaluation"
        Last stage to bring up to date; later stages are reported as skipped.

    Returns
    -------
    dict
        ``shards`` (key to status), ``ran_shards``, ``failed`` (key to message),
        ``teacher`` (``refit``/``up to date``/``failed``), ``embed_docs``, ``embed_seconds``,
        ``outputs`` and ``seconds``.
    """
    if until not in STAGES:
        raise ValueError(f"until must be one of {STAGES}, got {until!r}")
    from gem_assets.defs.partitions import SHARDS
    from gem_assets.defs.state import hash_shards, stale_shards, teacher_state
    from gem_assets.lib.io import artifacts

    out = out or sys.stdout
    t0 = time.perf_counter()
    _set_dispatch(defs is not None, recon_repo, out)
    if defs is None:
        from gem_assets.definitions import defs
    gem = defs.resources["gem"]
    embedder = defs.resources["embedder"]
    settings = gem.settings()
    layout = settings.layout  # GEM_HOME may be an object-store URL; the instance lives in layout.state_dir
    if isinstance(layout.home, Path):
        layout.home.mkdir(parents=True, exist_ok=True)
    elif _DISPATCH["recon"] is not None and getattr(layout.home, "protocol", "") == "memory":
        raise SystemExit(f"GEM_HOME={settings.home} lives in this process's memory, which the runs launched by "
                         "GEM_EXECUTOR (other than in_process) cannot see: use GEM_EXECUTOR=in_process, or a store "
                         "every process reaches (s3://, gs://, a local folder)")
    if instance is None:
        instance = open_instance(layout.dagster_home)

    pattern = gem.corpus_glob()
    shards = gem.shards()
    if not shards:
        raise SystemExit(
            f"the corpus glob {pattern!r} matches no .jsonl/.ndjson/.json/.parquet file (GEM_CORPUS / CORPUS=)"
        )
    print(f"gem-assets: {len(shards)} shard(s) from {pattern}  [profile {settings.profile}, K={settings.k}, "
          f"GEM_HOME={layout.home}]", file=out, flush=True)
    registered = set(instance.get_dynamic_partitions(SHARDS))
    new = [key for key in shards if key not in registered]
    if new:
        instance.add_dynamic_partitions(SHARDS, new)

    hashes, _ = hash_shards(shards)
    stale = stale_shards(instance, settings, embedder.model_id, hashes)
    status = {key: "up to date" for key in shards}
    failed: dict[str, str] = {}
    embed_docs, embed_seconds = 0, 0.0
    ran = _execute_shards(defs, "shard_job", instance, failed, stale, "documents, embeddings", lambda k: k, out)
    for key, success in ran.items():
        if success:
            status[key] = "embedded"
            meta = artifacts.read_embeddings_meta(layout, key) or {}
            embed_docs += int(meta.get("n_vectors", 0))
            embed_seconds += float(meta.get("seconds", 0.0))
        else:
            status[key] = "failed"

    state = teacher_state(instance, settings, hashes)
    teacher = "up to date"
    if not state["included"]:
        teacher = "failed"
        failed["teacher"] = "no shard could be embedded"
    elif state["stale"]:
        print(f"teacher: {state['reason']} -> teacher_sample, teacher_clusters", file=out, flush=True)
        teacher = "refit" if _execute(defs, "teacher_job", instance, failed, "teacher") else "failed"
    student, assigned, stats = _run_student_stages(defs, instance, settings, shards, status, failed, out)
    later = STAGES[STAGES.index(until) + 1:]
    skipped = f"skipped (until {until})"
    taxonomy = skipped if "taxonomy" in later else _run_taxonomy_stage(
        defs, instance, settings, [k for k in shards if status.get(k) != "failed"], failed, out)
    mixing = skipped if "mixing" in later else _run_mixing_stage(defs, instance, settings, stats, failed, out)
    evaluation = skipped if "evaluation" in later else _run_evaluation_stage(
        defs, instance, settings, shards, status, failed, out)
    seconds = time.perf_counter() - t0
    summary = {
        "shards": status,
        "ran_shards": [k for k in stale if status[k] == "embedded"],
        "failed": failed,
        "teacher": teacher,
        "student": student,
        "assigned_shards": assigned,
        "stats": stats,
        "taxonomy": taxonomy,
        "mixing": mixing,
        "evaluation": evaluation,
        "embed_docs": embed_docs,
        "embed_seconds": embed_seconds,
        "outputs": str(layout.outputs_dir),
        "seconds": seconds,
    }
    _print_summary(summary, settings, defs, shards, out)
    return summary


def _run_student_stages(defs, instance, settings, shards, status, failed, out) -> tuple[str, list[str], str]:
    """Student, per-shard assignments and stats, each only when its inputs changed.

    Returns ``(student, assigned_shards, stats)`` statuses; failures go into ``failed``.
    """
    from gem_assets.defs.student import stale_assignments, stats_state, student_state

    state = student_state(instance, settings)
    student = "up to date"
    if state["fingerprint"] is None:
        return "skipped (no teacher)", [], "skipped"
    if state["stale"]:
        print(f"student: {state['reason']} -> student_model", file=out, flush=True)
        if not _execute(defs, "student_job", instance, failed, "student"):
            return "failed", [], "skipped"
        student = "trained"
    keys = [k for k in shards if status.get(k) != "failed"]
    stale = stale_assignments(instance, settings, keys)
    ran = _execute_shards(defs, "assign_job", instance, failed, stale, "domain_assignments", lambda k: f"assign {k}", out)
    assigned = [key for key, success in ran.items() if success]
    sstate = stats_state(instance, settings, keys)
    stats = "up to date" if sstate["fingerprint"] is not None else "skipped"
    if sstate["stale"]:
        print(f"stats: {sstate['reason']} -> domain_stats", file=out, flush=True)
        stats = "computed" if _execute(defs, "stats_job", instance, failed, "stats") else "failed"
    return student, assigned, stats


def _run_taxonomy_stage(defs, instance, settings, keys, failed, out) -> str:
    """The GIS taxonomy, only when the teacher, the assignments or its parameters changed."""
    from gem_assets.defs.taxonomy import taxonomy_state

    state = taxonomy_state(instance, settings, keys)
    if state["fingerprint"] is None:
        return "skipped"
    if not state["stale"]:
        return "up to date"
    print(f"taxonomy: {state['reason']} -> taxonomy", file=out, flush=True)
    return "computed" if _execute(defs, "taxonomy_job", instance, failed, "taxonomy") else "failed"


def _run_mixing_stage(defs, instance, settings, stats: str, failed, out) -> str:
    """Proxy corpus, DoReMi, RegMix and the curated mixture, when ``domain_stats`` or the mixing
    parameters changed (the whole ``mixing_job`` runs when any of its assets is stale)."""
    from gem_assets.defs.mixing import mixing_state

    if stats in ("failed", "skipped"):
        return f"skipped (stats {stats})"
    state = mixing_state(instance, settings)
    if not state["stale"]:
        return "up to date" if state["reason"] == "up to date" else f"skipped ({state['reason']})"
    print(f"mixing: {state['reason']} -> mixing_job", file=out, flush=True)
    return "computed" if _execute(defs, "mixing_job", instance, failed, "mixing") else "failed"


def _run_evaluation_stage(defs, instance, settings, shards, status, failed, out) -> str:
    """``mixture_evaluation`` when its inputs or parameters changed (it needs every shard assigned)."""
    from gem_assets.defs.evaluation import evaluation_state

    if any(k in failed for k in ("teacher", "student")) or any(k.startswith("assign ") for k in failed):
        return "skipped (an upstream stage failed)"
    keys = [k for k in shards if status.get(k) != "failed"]
    state = evaluation_state(instance, settings, keys)
    if state["fingerprint"] is None:
        return f"skipped ({state['reason']})"
    if not state["stale"]:
        return "up to date"
    print(f"evaluation: {state['reason']} -> mixture_evaluation", file=out, flush=True)
    return "computed" if _execute(defs, "evaluation_job", instance, failed, "evaluation") else "failed"


def _print_summary(summary: dict, settings, defs, shards, out: TextIO) -> None:
    from gem_assets.lib.io import artifacts
    from gem_assets.lib.io import storage

    layout = settings.layout
    rows_in = kept = quarantined = 0
    for key in shards:
        meta = artifacts.read_documents_meta(layout, key)
        if meta:
            rows_in += meta["rows_in"]
            kept += meta["kept"]
            quarantined += meta["quarantined"]
    counts = {s: sum(1 for v in summary["shards"].values() if v == s) for s in ("embedded", "up to date", "failed")}
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p("")
    p("== gem-assets summary ==")
    p(f"shards      {len(shards)}: {counts['embedded']} embedded now, {counts['up to date']} up to date, "
      f"{counts['failed']} failed")
    p(f"documents   {rows_in} in = {kept} kept + {quarantined} quarantined")
    if summary["embed_docs"]:
        rate = summary["embed_docs"] / summary["embed_seconds"] if summary["embed_seconds"] > 0 else 0.0
        p(f"embeddings  {summary['embed_docs']} documents embedded now in {summary['embed_seconds']:.1f} s "
          f"({rate:.1f} docs/s)")
    else:
        p("embeddings  nothing to embed (all shards up to date)")
    summary_path = layout.teacher_outputs_dir / "summary.json"
    if summary_path.is_file():
        s = storage.read_json(summary_path)
        nmi = f", NMI vs source {s['nmi_vs_source']:.3f}" if s.get("nmi_vs_source") is not None else ""
        p(f"teacher     {summary['teacher']}: GEM K={s['k']} on {s['n_documents']} documents, "
          f"J={s['final_objective']:.6g} after {s['n_iter']} MM iterations, effective K {s['effective_k']:.2f}, "
          f"{s['dead_domains']} dead domain(s){nmi}")
    else:
        p(f"teacher     {summary['teacher']}")
    student_path = layout.outputs_dir / "student" / "summary.json"
    if student_path.is_file():
        st = storage.read_json(student_path)
        p(f"student     {summary.get('student')}: held-out agreement with the teacher {st['heldout_agreement']:.3f} "
          f"({st['n_heldout']} documents); assignments {len(summary.get('assigned_shards', []))} shard(s) now; "
          f"stats {summary.get('stats')}")
    tax_path = layout.outputs_dir / "taxonomy.json"
    if tax_path.is_file():
        tax = storage.read_json(tax_path)
        q = tax.get("quality", {}).get("gis")
        qual = f", names' mean NPMI {q['npmi']:.3f}, distinctiveness {q['distinctiveness']:.2f}" if q else ""
        p(f"taxonomy    {summary.get('taxonomy')}: {tax['k']} named domains in a tree of {2 * tax['k'] - 1} nodes, "
          f"{tax['vocabulary_size']} terms{qual} -> {tax_path}")
    manifest_path = layout.mixture_dir / "manifest.json"
    if manifest_path.is_file():
        man = storage.read_json(manifest_path)
        top = sorted(man["weights"].items(), key=lambda kv: -kv[1])[:3]
        p(f"mixing      {summary.get('mixing')}: {man['mixer']} weights (top: "
          f"{', '.join(f'{d} {w:.3f}' for d, w in top)}); curated mixture {man['documents']:,} documents, "
          f"{man['tokens']:,} tokens of a {man['budget_tokens']:,} budget -> {layout.mixture_dir}")
    elif summary.get("mixing"):
        p(f"mixing      {summary['mixing']}")
    eval_path = layout.evaluation_dir / "summary.json"
    if eval_path.is_file() and (layout.evaluation_dir / "results.csv").is_file():
        import polars as pl

        table = storage.read_csv(layout.evaluation_dir / "results.csv").filter(pl.col("target") == "all")
        best = table.sort("bpb_target").row(0, named=True)
        gem = table.filter(pl.col("bucketization") == "gem").sort("bpb_target")
        gem_best = f"; best GEM pair gem/{gem['mixer'][0]} {gem['bpb_target'][0]:.4f}" if gem.height else ""
        diffs = layout.evaluation_dir / "differences.csv"
        km = ""
        if diffs.is_file():
            d = storage.read_csv(diffs).filter((pl.col("versus") == "kmeans")
                                               & pl.col("target").is_in(["all", "mean_of_sources"]))
            if d.height:
                km = "; GEM - k-means " + ", ".join(f"{r['target']}/{r['mixer']} {r['difference']:+.4f} "
                                                    f"(+-{r['half_width']:.4f})" for r in d.iter_rows(named=True))
        p(f"evaluation  {summary.get('evaluation')}: {table.height} bucketization x mixer pairs on target 'all', best "
          f"{best['bucketization']}/{best['mixer']} {best['bpb_target']:.4f} held-out bits per byte{gem_best}{km} "
          f"({layout.evaluation_dir / 'results.md'})")
    elif summary.get("evaluation"):
        p(f"evaluation  {summary['evaluation']}")
    for key, message in summary["failed"].items():
        p(f"FAILED      {key}: {message}")
    mlflow = defs.resources["mlflow"]
    p("")
    p("where to look:")
    p(f"  teacher outputs  {layout.teacher_outputs_dir}/  (shares.png, objective.png, domains.csv, "
      "assignments.parquet, history.csv, summary.json, model/)")
    p(f"  quarantine       {layout.outputs_dir / 'quarantine'}/  (one Parquet per shard, a reason per row)")
    p(f"  student          {layout.outputs_dir / 'student'}/, assignments/<shard>.parquet, domain_stats/")
    p(f"  taxonomy         {layout.outputs_dir / 'taxonomy.json'}, taxonomy/ (taxonomy.md, dendrogram.png, "
      "domain_map.png)")
    p(f"  mixing           {layout.weights_dir}/ (doremi.json, regmix.json, pictures), {layout.mixture_dir}/ "
      "(part-*.parquet, manifest.json)")
    p(f"  evaluation       {layout.evaluation_dir}/  (results.md, results.csv, runs.csv, bpb.png, weights.json)")
    p(f"  MLflow           {mlflow.resolved_uri(layout)}  "
      f"(mlflow ui --backend-store-uri {mlflow.resolved_uri(layout)})")
    p(f"  Dagster UI       make ui  ->  http://127.0.0.1:3000  (DAGSTER_HOME={layout.dagster_home})")
    p(f"wall time   {summary['seconds']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 when a shard or the teacher failed)."""
    parser = argparse.ArgumentParser(prog="python -m gem_assets.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--until", choices=STAGES, default="evaluation",
                        help="last stage to bring up to date (default: the whole graph)")
    parser.add_argument("--dagster-home", action="store_true",
                        help="create the Dagster instance folder ($GEM_STATE/dagster), print it and exit (make ui)")
    args = parser.parse_args(argv)
    if args.dagster_home:
        print(prepare_dagster_home())
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no table-creation chatter
    logging.getLogger("alembic").setLevel(logging.WARNING)
    summary = run_pipeline(until=args.until)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
