"""``make run``: bring the asset graph up to date on the configured corpus, as Dagster sees it.

``python -m gem_assets.run`` (what ``make run`` calls) is a thin driver over Dagster's own
machinery:

1. resolves the corpus (``GEM_CORPUS``; unset: the BBC News default corpus, written once under
   ``$GEM_HOME/corpus/``) and registers a ``shards`` partition per new shard file;
2. runs the ``observe_shards`` job, which records a data version (content hash) per shard file;
3. asks Dagster which assets and partitions are MISSING or STALE -- the stale status the UI
   shows, from a ``dagster-webserver`` it starts on 127.0.0.1 over the same instance and
   ``workspace.yaml`` (GraphQL ``staleStatus`` / ``staleStatusByPartition``) -- and materializes
   them in dependency order, one layer at a time, asking again after each layer that ran
   something (Dagster's staleness looks one dependency back); partitioned assets get one run per
   partition, a failed run fails that partition only (its downstream is skipped, the other
   shards go on);
4. stops the webserver and prints a summary and where the outputs are.

Runs are recorded in a persistent Dagster instance at ``$GEM_STATE/dagster`` (``DAGSTER_HOME``;
``GEM_STATE`` defaults to ``GEM_HOME`` when it is a local folder), the one ``make ui`` opens, so
everything done here shows up there. ``GEM_HOME`` may be an object-store URL (``s3://...``):
every asset's outputs then go there, the instance and the MLflow store stay local.
Re-running with nothing changed materializes nothing.
"""

from __future__ import annotations

import argparse
import graphlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

__all__ = ["CodeLocation", "StaleStatusServer", "run_pipeline", "open_instance", "prepare_dagster_home", "main"]

_QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
_TAGS = {"gem/launched_by": "gem_assets.run"}
#: The job of every asset (gem_assets/defs/jobs.py) that runs are made of, with an asset selection.
ASSETS_JOB = "gem_assets_job"
REPO_ROOT = Path(__file__).resolve().parents[1]

#: Stages after which ``run_pipeline(until=...)`` / ``--until`` can stop, and the assets of the
#: stages after each (by name; the mixing assets are read from gem_assets.defs.mixing.MIXING_ASSETS).
STAGES = ("stats", "taxonomy", "mixing", "evaluation")

#: Labels of failures and summary entries of unpartitioned assets (default: the asset's name).
_STAGE_OF = {"teacher_sample": "teacher", "teacher_clusters": "teacher", "student_model": "student",
             "domain_stats": "stats", "taxonomy": "taxonomy", "mixture_evaluation": "evaluation"}


def _stage_assets() -> dict[str, set[str]]:
    from gem_assets.defs.mixing import MIXING_ASSETS

    mixing = {k.to_user_string() for a in MIXING_ASSETS for k in a.keys}
    return {"taxonomy": {"taxonomy"}, "mixing": mixing, "evaluation": {"mixture_evaluation"}}


# --------------------------------------------------------------------------- the code location
@dataclass(frozen=True)
class CodeLocation:
    """Where the webserver and out-of-process runs load the definitions from.

    Exactly one of ``module_name`` / ``python_file``; the default is the project's
    ``workspace.yaml`` entry (``gem_assets.definitions:defs``, location ``gem_assets``).
    """

    module_name: str | None = "gem_assets.definitions"
    python_file: str | None = None
    attribute: str = "defs"
    location_name: str = "gem_assets"
    working_directory: str = str(REPO_ROOT)

    def workspace_yaml(self) -> str:
        kind, key, target = (("python_module", "module_name", self.module_name) if self.module_name
                             else ("python_file", "relative_path", str(Path(self.python_file).resolve())))
        return (f"load_from:\n  - {kind}:\n      {key}: {json.dumps(target)}\n"
                f"      attribute: {self.attribute}\n      location_name: {self.location_name}\n"
                f"      working_directory: {json.dumps(self.working_directory)}\n")

    def reconstructable_job(self):
        from gem_assets.defs.executors import reconstructable_asset_job

        return reconstructable_asset_job(self.module_name, self.python_file, self.attribute, self.working_directory)


# --------------------------------------------------------------------------- Dagster's stale status
_Q_NODES = """query GemNodes { assetNodes { assetKey { path } isPartitioned isObservable isMaterializable
  dependencyKeys { path } staleStatus
  staleCauses { key { path } partitionKey category reason dependency { path } dependencyPartitionKey } } }"""

_Q_PARTS = """query GemParts($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) { assetKey { path }
  partitionKeys staleStatusByPartition
  staleCausesByPartition { key { path } partitionKey category reason dependency { path } dependencyPartitionKey } } }"""

_Q_LOCATION = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def _die_with_parent(parent: int):
    """A ``preexec_fn`` for the webserver's process: on Linux, ask for SIGTERM when the driver
    (``parent``) that started it dies, even by SIGKILL (no ``__exit__`` runs then), so that no
    webserver outlives a killed ``make run``; elsewhere nothing."""

    def arm() -> None:
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            except (OSError, AttributeError):
                return
            if os.getppid() != parent:  # the driver died before the request was made
                os._exit(1)

    return arm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cause(c: dict) -> str:
    dep = c.get("dependency") or c.get("key")
    where = "/".join(dep["path"]) if dep else ""
    part = c.get("dependencyPartitionKey") if c.get("dependency") else c.get("partitionKey")
    return c["reason"] + (f" <- {where}" + (f"[{part}]" if part else "") if where else "")


class StaleStatusServer:
    """A ``dagster-webserver`` subprocess on 127.0.0.1 and a free port, over ``dagster_home``
    and a workspace with ``location``, asked for stale status over GraphQL (the resolver the UI
    uses: Dagster 1.13 has no public Python API for it). A context manager: on exit the
    webserver's process group is stopped (SIGTERM, then SIGKILL)."""

    def __init__(self, dagster_home: Path, location: CodeLocation, startup_timeout_s: float = 180.0):
        self.dagster_home = Path(dagster_home)
        self.location = location
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> "StaleStatusServer":
        self._tmp = tempfile.TemporaryDirectory(prefix="gem-ws-")
        ws = Path(self._tmp.name) / "workspace.yaml"
        ws.write_text(self.location.workspace_yaml())
        port = _free_port()
        exe = Path(sys.executable).with_name("dagster-webserver")
        cmd = [str(exe) if exe.exists() else "dagster-webserver", "-w", str(ws), "-h", "127.0.0.1", "-p", str(port)]
        env = {**os.environ, "DAGSTER_HOME": str(self.dagster_home)}
        self._log_path = self.dagster_home / "gem_run_webserver.log"
        self._log = open(self._log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent(os.getpid()))
        self.url = f"http://127.0.0.1:{port}/graphql"
        self._ready = False
        return self

    def wait_ready(self) -> None:
        """Block until the code location is loaded (started by ``__enter__``, in the background)."""
        if self._ready:
            return
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster-webserver exited ({self.proc.returncode}): "
                                   f"{self._log_path.read_text(errors='replace')[-3000:]}")
            try:
                entries = self._post(_Q_LOCATION, None, 5)["workspaceOrError"].get("locationEntries") or []
            except (urllib.error.URLError, OSError, ValueError, RuntimeError):
                entries = []
            entry = next((e for e in entries if e["name"] == self.location.location_name), None)
            if entry is not None and entry["loadStatus"] == "LOADED":
                err = entry["locationOrLoadError"] or {}
                if err.get("__typename") == "PythonError":
                    raise RuntimeError(f"the code location failed to load in the webserver: {err['message']}")
                self._ready = True
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"dagster-webserver not ready after {self.startup_timeout_s:.0f} s "
                                   f"(log: {self._log_path})")
            time.sleep(0.25)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self.proc is not None:  # the code server it started lives in the same process group
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if getattr(self, "_log", None) is not None:
            self._log.close()
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()

    def query(self, query: str, variables: dict | None = None, timeout: float = 300) -> dict:
        """The ``data`` of a GraphQL query (waits for the code location first)."""
        self.wait_ready()
        return self._post(query, variables, timeout)

    def _post(self, query: str, variables: dict | None, timeout: float) -> dict:
        req = urllib.request.Request(self.url, data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            out = json.loads(resp.read())
        if out.get("errors"):
            raise RuntimeError(f"GraphQL errors: {out['errors']}")
        return out["data"]

    def graph(self) -> dict[str, set[str]]:
        """Materializable asset to the materializable assets it depends on."""
        nodes = self.query(_Q_NODES)["assetNodes"]
        mat = {"/".join(n["assetKey"]["path"]) for n in nodes if n["isMaterializable"]}
        return {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} & mat
                for n in nodes if n["isMaterializable"]}

    def flagged(self) -> dict[tuple[str, str | None], tuple[str, list[str]]]:
        """``(asset, partition or None)`` to ``(MISSING or STALE, causes)`` for every materializable
        asset (partition) that is not FRESH."""
        nodes = self.query(_Q_NODES)["assetNodes"]
        res: dict = {}
        parted = []
        for n in nodes:
            if not n["isMaterializable"]:
                continue
            if n["isPartitioned"]:
                parted.append({"path": n["assetKey"]["path"]})
            elif n["staleStatus"] != "FRESH":
                res[("/".join(n["assetKey"]["path"]), None)] = (n["staleStatus"], [_cause(c) for c in n["staleCauses"]])
        if parted:
            for n in self.query(_Q_PARTS, {"keys": parted})["assetNodes"]:
                key = "/".join(n["assetKey"]["path"])
                for pk, st, causes in zip(n["partitionKeys"], n["staleStatusByPartition"], n["staleCausesByPartition"]):
                    if st != "FRESH":
                        res[(key, pk)] = (st, [_cause(c) for c in causes])
        return res


# --------------------------------------------------------------------------- the instance
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

# --------------------------------------------------------------------------- the driver
@dataclass
class _Progress:
    """What ran in this invocation: (asset, partition or None) to success, and failures by label."""

    ran: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)
    failed_partitions: set = field(default_factory=set)
    failed_assets: set = field(default_factory=set)


def _label(asset: str, pk: str | None) -> str:
    if pk is None:
        return _STAGE_OF.get(asset, asset)
    if asset in ("documents", "embeddings"):
        return pk
    return f"assign {pk}" if asset == "domain_assignments" else f"{asset}[{pk}]"


def _reason(statuses: list[tuple[str, list[str]]]) -> str:
    st = "MISSING" if any(s == "MISSING" for s, _ in statuses) else "STALE"
    causes = sorted({c for _, cs in statuses for c in cs})
    if st == "MISSING" or not causes:
        return st.lower()
    return "stale: " + "; ".join(causes[:3]) + (f" (+{len(causes) - 3} more)" if len(causes) > 3 else "")


def _run_layer(defs, instance, layer_runs: list, progress: _Progress, execution, location: CodeLocation | None,
               out: TextIO) -> None:
    """Execute one layer's runs: ``(partition or None, [asset names], reason)`` each."""
    from dagster import AssetKey

    from gem_assets.defs.executors import JobRequest, failure_message, run_jobs

    parted = [r for r in layer_runs if r[0] is not None]
    for i, (pk, assets, reason) in enumerate(layer_runs, 1):
        what = ", ".join(assets)
        if pk is None:
            print(f"{_label(assets[0], None)}: {reason} -> {what}", file=out, flush=True)
        else:
            print(f"[{parted.index((pk, assets, reason)) + 1}/{len(parted)}] shard {pk}: {reason} -> {what}",
                  file=out, flush=True)

    def record(pk, assets, message, done) -> None:
        done = {k.to_user_string() for k in done}
        for a in assets:
            ok = message is None and a in done
            progress.ran[(a, pk)] = ok
            if not ok:
                (progress.failed_partitions.add(pk) if pk is not None else progress.failed_assets.add(a))
        if message is not None:
            progress.failed[_label(assets[0], pk)] = message
            print(f"    FAILED {_label(assets[0], pk)}: {message}", file=out, flush=True)

    if execution is None:  # in process
        job = _job(defs, ASSETS_JOB)
        for pk, assets, _ in layer_runs:
            result = job.execute_in_process(instance=instance, partition_key=pk, raise_on_error=False,
                                            asset_selection=[AssetKey.from_user_string(a) for a in assets],
                                            run_config=_QUIET_RUN_CONFIG, tags=_TAGS)
            record(pk, assets, None if result.success else failure_message(result),
                   [e.asset_key for e in result.get_asset_materialization_events()])
        return
    job = location.reconstructable_job()
    requests = {f"{pk}|{','.join(a)}": (pk, a) for pk, a, _ in layer_runs}
    reqs = [JobRequest(job, lb, pk, tuple(AssetKey.from_user_string(x) for x in a)) for lb, (pk, a) in requests.items()]
    parallel = execution.parallel_runs if len(parted) > 1 else 1
    if parallel > 1:
        print(f"    {len(reqs)} runs, {parallel} at a time (GEM_EXECUTOR={execution.executor})", file=out, flush=True)
    for lb, (message, done) in run_jobs(instance, reqs, parallel=parallel, run_config=_QUIET_RUN_CONFIG,
                                        tags=_TAGS).items():
        record(*requests[lb], message, done)


def run_pipeline(defs=None, instance=None, out: TextIO | None = None, until: str = "evaluation",
                 location: CodeLocation | None = None) -> dict:
    """Bring every asset of the graph up to date, as Dagster's stale status has it; return a summary.

    Parameters
    ----------
    defs : Definitions, optional
        Default: :data:`gem_assets.definitions.defs` (resources from the environment).
    instance : DagsterInstance, optional
        A persistent instance. Default: the one at ``$GEM_STATE/dagster`` (``Layout.dagster_home``).
    out : text stream, optional
        Where progress and the summary are printed (default stdout).
    until : {"stats", "taxonomy", "mixing", "evaluation"}, default "evaluation"
        Last stage to bring up to date; later stages are reported as skipped.
    location : CodeLocation, optional
        Where the webserver (and, with ``GEM_EXECUTOR`` other than ``in_process``, the runs) load
        the same definitions as ``defs`` from; default ``gem_assets.definitions:defs``.

    Returns
    -------
    dict
        ``shards`` (key to ``embedded``/``up to date``/``failed``), ``ran_shards``, ``failed``
        (label to message), ``teacher``, ``student``, ``assigned_shards``, ``stats``, ``taxonomy``,
        ``mixing``, ``evaluation``, ``materialized`` (``asset`` or ``asset[partition]`` of every
        successful materialization), ``embed_docs``, ``embed_seconds``, ``outputs``, ``seconds``.
    """
    if until not in STAGES:
        raise ValueError(f"until must be one of {STAGES}, got {until!r}")
    from gem_assets.defs.executors import ExecutionSettings
    from gem_assets.defs.partitions import SHARDS
    from gem_assets.lib.io import artifacts

    out = out or sys.stdout
    t0 = time.perf_counter()
    location = location or CodeLocation()
    if defs is None:
        from gem_assets.definitions import defs
    gem = defs.resources["gem"]
    settings = gem.settings()
    layout = settings.layout  # GEM_HOME may be an object-store URL; the instance lives in layout.state_dir
    execution = ExecutionSettings.from_env()
    if not execution.needs_reconstructable:
        execution = None
    if isinstance(layout.home, Path):
        layout.home.mkdir(parents=True, exist_ok=True)
    elif execution is not None and getattr(layout.home, "protocol", "") == "memory":
        raise SystemExit(f"GEM_HOME={settings.home} lives in this process's memory, which the runs launched by "
                         "GEM_EXECUTOR (other than in_process) cannot see: use GEM_EXECUTOR=in_process, or a store "
                         "every process reaches (s3://, gs://, a local folder)")
    if instance is None:
        instance = open_instance(layout.dagster_home)
    if not instance.is_persistent or instance.root_directory is None:
        raise ValueError("run_pipeline needs a persistent Dagster instance (the webserver it asks reads it)")

    pattern = gem.corpus_glob()
    shards = gem.shards()
    if not shards:
        raise SystemExit(
            f"the corpus glob {pattern!r} matches no .jsonl/.ndjson/.json/.parquet file (GEM_CORPUS / CORPUS=)"
        )
    print(f"gem-assets: {len(shards)} shard(s) from {pattern}  [profile {settings.profile}, K={settings.k}, "
          f"GEM_HOME={layout.home}]", file=out, flush=True)
    progress = _Progress()
    with StaleStatusServer(Path(instance.root_directory), location) as server:  # loads while we observe
        registered = set(instance.get_dynamic_partitions(SHARDS))
        new = [key for key in shards if key not in registered]
        if new:
            instance.add_dynamic_partitions(SHARDS, new)
        if "observe_shards" in {j.name for j in (defs.jobs or [])}:
            result = _job(defs, "observe_shards").execute_in_process(
                instance=instance, raise_on_error=False, run_config=_QUIET_RUN_CONFIG, tags=_TAGS)
            if not result.success:
                progress.failed["observe_shards"] = failure_message_of(result)
        graph = server.graph()
        excluded = set().union(*(names for stage, names in _stage_assets().items()
                                 if STAGES.index(stage) > STAGES.index(until)))
        sorter = graphlib.TopologicalSorter(graph)
        sorter.prepare()
        flagged = None
        while sorter.is_active():
            layer = sorted(sorter.get_ready())
            if flagged is None:
                flagged = server.flagged()
            runs: dict = {}
            for (asset, pk), status in sorted(flagged.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
                if asset not in layer or asset in excluded or pk in progress.failed_partitions:
                    continue
                if _ancestors(graph, asset) & (progress.failed_assets | excluded):
                    continue
                runs.setdefault(pk, []).append((asset, status))
            if "teacher_sample" in layer and "teacher_sample" not in {a for a, _ in runs.get(None, [])} \
                    and not _ancestors(graph, "teacher_sample") & (progress.failed_assets | excluded):
                newly_failed = _failed_but_sampled(layout, progress.failed_partitions)
                if newly_failed:  # a failed documents partition records no new data version: Dagster sees
                    # nothing stale, yet the sample holds the shard's former embeddings (GEM_ON_BAD_SHARD)
                    runs.setdefault(None, []).append(("teacher_sample", (
                        "STALE", [f"shard {k} failed" for k in newly_failed])))
            layer_runs = [(pk, [a for a, _ in items], _reason([s for _, s in items]))
                          for pk, items in sorted(runs.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))]
            if layer_runs:
                _run_layer(defs, instance, layer_runs, progress, execution, location, out)
                flagged = None  # staleness looks one dependency back: ask again
            sorter.done(*layer)

    ran_ok = {k for k, ok in progress.ran.items() if ok}
    status = {}
    for key in shards:
        if key in progress.failed_partitions and any(progress.ran.get((a, key)) is False
                                                     for a in ("documents", "embeddings")):
            status[key] = "failed"
        elif ("embeddings", key) in ran_ok:
            status[key] = "embedded"
        else:
            status[key] = "up to date"
    embed_docs, embed_seconds = 0, 0.0
    for key in shards:
        if status[key] == "embedded":
            meta = artifacts.read_embeddings_meta(layout, key) or {}
            embed_docs += int(meta.get("n_vectors", 0))
            embed_seconds += float(meta.get("seconds", 0.0))

    def stage(assets: set[str], done_word: str, name: str) -> str:
        if name in _stage_assets() and STAGES.index(name) > STAGES.index(until):
            return f"skipped (until {until})"
        if any(progress.ran.get((a, None)) is False for a in assets):
            return "failed"
        if any((a, None) in ran_ok for a in assets):
            return done_word
        if any(_ancestors(graph, a) & progress.failed_assets for a in assets):
            return "skipped (an upstream stage failed)"
        return "up to date"

    summary = {
        "shards": status,
        "ran_shards": [k for k in shards if status[k] == "embedded"],
        "failed": progress.failed,
        "teacher": stage({"teacher_sample", "teacher_clusters"}, "refit", "teacher"),
        "student": stage({"student_model"}, "trained", "student"),
        "assigned_shards": [pk for (a, pk) in sorted(ran_ok, key=lambda k: (k[0], k[1] or "")) if a == "domain_assignments"],
        "stats": stage({"domain_stats"}, "computed", "stats"),
        "taxonomy": stage({"taxonomy"}, "computed", "taxonomy"),
        "mixing": stage(_stage_assets()["mixing"], "computed", "mixing"),
        "evaluation": stage({"mixture_evaluation"}, "computed", "evaluation"),
        "excluded": exclusions(layout, shards),
        "materialized": sorted(a if pk is None else f"{a}[{pk}]" for a, pk in ran_ok),
        "embed_docs": embed_docs,
        "embed_seconds": embed_seconds,
        "outputs": str(layout.outputs_dir),
        "seconds": time.perf_counter() - t0,
    }
    _print_summary(summary, settings, defs, shards, out)
    return summary


def _job(defs, name: str):
    """``defs.get_job_def(name)`` without its warning that asset jobs given to ``Definitions``
    resolve there (they do: ``get_job_def`` is the public way)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Found asset job named", category=UserWarning)
        return defs.get_job_def(name)


def failure_message_of(result) -> str:
    from gem_assets.defs.executors import failure_message

    return failure_message(result)


def _failed_but_sampled(layout, failed_partitions) -> list[str]:
    """The shards that failed in this invocation and that the current teacher sample holds."""
    from gem_assets.lib.io import storage

    meta = layout.teacher_sample_dir / "meta.json"
    if not failed_partitions or not meta.is_file():
        return []
    return sorted(set(storage.read_json(meta).get("shards", [])) & {k for k in failed_partitions if k})


#: Where each aggregate stage records the shards it left out: (summary label, file under the layout,
#: key of the mapping in it).
_EXCLUSION_RECORDS = (
    ("teacher", lambda lay: lay.teacher_sample_dir / "meta.json", "excluded"),
    ("student", lambda lay: lay.student_outputs_dir / "summary.json", "excluded"),
    ("stats", lambda lay: lay.domain_stats_dir / "summary.json", "excluded"),
    ("taxonomy", lambda lay: lay.taxonomy_path, "excluded_shards"),
    ("mixing", lambda lay: lay.proxy_corpus_dir / "meta.json", "excluded"),
    ("evaluation", lambda lay: lay.evaluation_dir / "summary.json", "excluded"),
)


def exclusions(layout, shards) -> dict[str, dict]:
    """Every current shard that an aggregate stage's current output leaves out: key to ``{"reason",
    "stages"}`` (the reason of the first stage that names it; the stages, in pipeline order)."""
    from gem_assets.lib.io import storage

    out: dict[str, dict] = {}
    for stage, where, field_name in _EXCLUSION_RECORDS:
        path = where(layout)
        if not path.is_file():
            continue
        for key, reason in (storage.read_json(path).get(field_name) or {}).items():
            if key in shards:
                entry = out.setdefault(key, {"reason": reason, "stages": []})
                entry["stages"].append(stage)
    return dict(sorted(out.items()))


def _ancestors(graph: dict[str, set[str]], asset: str) -> set[str]:
    seen: set[str] = set()
    stack = list(graph.get(asset, ()))
    while stack:
        a = stack.pop()
        if a not in seen:
            seen.add(a)
            stack.extend(graph.get(a, ()))
    return seen



def _named(domain, names: dict[str, str]) -> str:
    """``5 "football / club / league"`` when the taxonomy named the domain, else ``5``."""
    name = names.get(str(domain))
    return f'{domain} "{name}"' if name else str(domain)

def _print_summary(summary: dict, settings, defs, shards, out: TextIO) -> None:
    from gem_assets.lib.io import artifacts
    from gem_assets.lib.io import storage

    layout = settings.layout
    rows_in = kept = quarantined = 0
    reasons: dict[str, int] = {}
    for key in shards:
        meta = artifacts.read_documents_meta(layout, key)
        if meta:
            rows_in += meta["rows_in"]
            kept += meta["kept"]
            quarantined += meta["quarantined"]
            for r, n in (meta.get("reasons") or {}).items():
                if n:
                    reasons[r] = reasons.get(r, 0) + int(n)
    counts = {s: sum(1 for v in summary["shards"].values() if v == s) for s in ("embedded", "up to date", "failed")}
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p("")
    p("== gem-assets summary ==")
    p(f"shards      {len(shards)}: {counts['embedded']} embedded now, {counts['up to date']} up to date, "
      f"{counts['failed']} failed")
    why = f" ({', '.join(f'{r} {n}' for r, n in sorted(reasons.items()))})" if reasons else ""
    p(f"documents   {rows_in} in = {kept} kept + {quarantined} quarantined{why}")
    student_summary = layout.outputs_dir / "student" / "summary.json"
    cross = storage.read_json(student_summary).get("cross_shard_duplicates") if student_summary.is_file() else None
    if cross and cross.get("documents"):
        per = ", ".join(f"{k} {n}" for k, n in cross["per_shard"].items())
        p(f"duplicates  {cross['documents']} kept document(s) whose id a shard with an earlier key kept, left out "
          f"from the assignments on ({per}) -> {cross['path']}")
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
    names: dict[str, str] = {}
    if tax_path.is_file():
        tax = storage.read_json(tax_path)
        names = {str(d["id"]): d.get("name", "") for d in tax.get("domains", [])}
        q = tax.get("quality", {}).get("gis")
        qual = f", names' mean NPMI {q['npmi']:.3f}, distinctiveness {q['distinctiveness']:.2f}" if q else ""
        p(f"taxonomy    {summary.get('taxonomy')}: {tax['k']} named domains in a tree of {2 * tax['k'] - 1} nodes, "
          f"{tax['vocabulary_size']} terms{qual} -> {tax_path}")
    manifest_path = layout.mixture_dir / "manifest.json"
    if manifest_path.is_file():
        man = storage.read_json(manifest_path)
        top = sorted(man["weights"].items(), key=lambda kv: -kv[1])[:3]
        p(f"mixing      {summary.get('mixing')}: {man['mixer']} weights (top: "
          f"{', '.join(_named(d, names) + f' {w:.3f}' for d, w in top)}); curated mixture {man['documents']:,} documents, "
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
    excluded = summary.get("excluded", {})
    policy = f"GEM_ON_BAD_SHARD={settings.on_bad_shard}"
    for key, message in summary["failed"].items():
        left = excluded.get(key)
        p(f"FAILED      {key}: {message}" + (f"; left out of {', '.join(left['stages'])} ({policy})" if left else ""))
    for key, entry in excluded.items():
        if key not in summary["failed"]:
            p(f"excluded    {key} ({entry['reason']}): left out of {', '.join(entry['stages'])}")
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
    """Command-line entry point; returns the exit status (1 when any run failed)."""
    parser = argparse.ArgumentParser(prog="python -m gem_assets.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--until", choices=STAGES, default="evaluation",
                        help="last stage to bring up to date (default: the whole graph)")
    parser.add_argument("--dagster-home", action="store_true",
                        help="create the Dagster instance folder ($GEM_STATE/dagster), print it and exit (make ui)")
    parser.add_argument("--defs-file", metavar="FILE",
                        help="the code location: a Python file whose 'defs' are the Definitions to run (default: "
                        "gem_assets.definitions, what workspace.yaml loads); the webserver loads the same file")
    args = parser.parse_args(argv)
    if args.dagster_home:
        print(prepare_dagster_home())
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no table-creation chatter
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import warnings

    from dagster import BetaWarning

    # the observable shard source uses APIs Dagster marks beta (observable_source_asset,
    # DataVersionsByPartition); the warning says nothing a make run user can act on
    warnings.filterwarnings("ignore", category=BetaWarning)
    # SIGTERM ends the driver like Ctrl-C, so the webserver it started is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    defs = location = None
    if args.defs_file:
        import importlib.util

        path = Path(args.defs_file).resolve()
        spec = importlib.util.spec_from_file_location(f"gem_defs_file_{os.getpid()}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        defs = module.defs
        location = CodeLocation(module_name=None, python_file=str(path), working_directory=str(path.parent))
    summary = run_pipeline(defs=defs, until=args.until, location=location)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
