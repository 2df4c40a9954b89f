"""How the steps of a run execute, and how ``make run`` launches its runs.

``GEM_EXECUTOR`` selects the executor of every job of the code location:

``in_process`` (default)
    Every step of a run in the run's process, one after another: the embedding model loads
    once per run. ``make run`` executes its runs in its own process
    (``execute_in_process``), one after another.
``multiprocess``
    Dagster's multiprocess executor (forkserver start): every step in its own process, at most
    ``GEM_MAX_CONCURRENT`` at a time. ``make run`` launches its runs (``gem_assets_job`` with
    the asset selection Dagster reports missing or stale, one run per shard partition) from a
    code pointer (:func:`reconstructable_asset_job`), and the shard runs of one layer up to
    ``GEM_MAX_CONCURRENT`` at once, each in its own worker process (:func:`run_jobs`).
``dask``
    dagster-dask's executor: every step a task on a Dask cluster, the one at
    ``GEM_DASK_ADDRESS`` (``tcp://host:8786``) or, without it, a local cluster of
    ``GEM_MAX_CONCURRENT`` single-threaded worker processes started per run. dagster-dask
    0.29.27 as released fails every partitioned run (dask's task spec iterates the tuples it is
    given and Dagster's records refuse iteration; found with dask 2026.8) and names a step's
    task ``<job>.<step>``, so concurrent runs of one job on a shared cluster collide
    (dagster-io/dagster#21418). :class:`GemDaskExecutor` is its executor with both fixed (the
    arguments travel opaque, the task key carries the run id) for the ``existing`` and
    ``local`` clusters; the Dagster internals it needs come from :mod:`gem_assets.defs._compat`,
    which refuses a dagster or dagster-dask release other than the pinned one. ``make run``
    launches its runs from a code pointer, one at a time.
``k8s``
    dagster-k8s's ``k8s_job_executor``: every step a Kubernetes Job (the production path;
    configuration in ``deploy/`` and docs/scaling.md). Its settings (namespace, image,
    volumes, resources, ``max_concurrent``) come from the run config the deployment supplies
    (``deploy/k8s/run_config.yaml``), not from ``GEM_MAX_CONCURRENT``. ``make run`` launches
    its runs from a code pointer, one at a time.

The integration libraries are imported only when their executor is selected. Runs launched by
the daemon (automation, backfills, the UI) use the same executor; how many run at once is the
instance's run queue limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

__all__ = ["EXECUTORS", "ExecutionSettings", "build_executor", "executor_from_env", "run_jobs", "JobRequest",
           "failure_message", "reconstructable_asset_job"]

#: Values of ``GEM_EXECUTOR``.
EXECUTORS = ("in_process", "multiprocess", "dask", "k8s")


@dataclass(frozen=True)
class ExecutionSettings:
    """Executor choice and concurrency.

    Parameters
    ----------
    executor : str
        One of :data:`EXECUTORS`.
    max_concurrent : int
        Steps at once within a run (multiprocess, k8s), Dask workers of a local cluster, and
        shard runs at once in ``make run`` (multiprocess).
    dask_address : str or None
        Scheduler address of an existing Dask cluster; ``None`` starts a local one per run.
    """

    executor: str = "in_process"
    max_concurrent: int = 2
    dask_address: str | None = None

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"GEM_EXECUTOR={self.executor!r} is not one of {list(EXECUTORS)}")
        if isinstance(self.max_concurrent, bool) or not isinstance(self.max_concurrent, int) \
                or self.max_concurrent < 1:
            raise ValueError(f"GEM_MAX_CONCURRENT must be an integer >= 1, got {self.max_concurrent!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ExecutionSettings":
        """Read ``GEM_EXECUTOR``, ``GEM_MAX_CONCURRENT`` (default: the CPU count) and ``GEM_DASK_ADDRESS``."""
        env = os.environ if env is None else env
        executor = (env.get("GEM_EXECUTOR", "").strip().lower() or "in_process").replace("-", "_")
        raw = env.get("GEM_MAX_CONCURRENT", "").strip()
        if raw:
            try:
                max_concurrent = int(raw)
            except ValueError as exc:
                raise ValueError(f"GEM_MAX_CONCURRENT must be an integer >= 1, got {raw!r}") from exc
        else:
            max_concurrent = max(1, os.cpu_count() or 1)
        return cls(executor=executor, max_concurrent=max_concurrent,
                   dask_address=env.get("GEM_DASK_ADDRESS", "").strip() or None)

    @property
    def parallel_runs(self) -> int:
        """How many shard runs of one layer ``make run`` executes at once (1 unless multiprocess)."""
        return self.max_concurrent if self.executor == "multiprocess" else 1

    @property
    def needs_reconstructable(self) -> bool:
        """Whether runs must be launched from a code pointer (steps leave the run's process)."""
        return self.executor != "in_process"


def build_executor(settings: ExecutionSettings) -> ExecutorDefinition:
    """The Dagster executor definition for ``settings``.

    Raises
    ------
    ImportError
        If the executor's integration library is not installed (``pip install -e '.[dist]'``).
    """
    n = settings.max_concurrent
    if settings.executor == "in_process":
        return in_process_executor
    if settings.executor == "multiprocess":
        # forkserver: one server process imports Dagster and the code location once, every step
        # is forked from it (spawning a fresh interpreter per step costs seconds of imports)
        return multiprocess_executor.configured({"max_concurrent": n, "start_method": {"forkserver": {}}},
                                                name="gem_multiprocess")
    if settings.executor == "dask":
        cluster = ({"existing": {"address": settings.dask_address}} if settings.dask_address
                   else {"local": {"n_workers": n, "threads_per_worker": 1, "processes": True}})
        return _dask_executor_def().configured({"cluster": cluster}, name="gem_dask")
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as exc:  # pragma: no cover
        raise ImportError("GEM_EXECUTOR=k8s needs dagster-k8s: pip install -e '.[dist]'") from exc
    # left unconfigured: namespace, image, volumes, resources and max_concurrent come from the
    # run config the deployment supplies (deploy/k8s/run_config.yaml, or the Helm chart's defaults)
    return k8s_job_executor


class _Opaque:
    """Arguments Dask must not parse: it walks the tuples it is given, and Dagster's records
    (the run, its partition subsets) refuse iteration."""

    __slots__ = ("args",)

    def __init__(self, args: tuple) -> None:  # noqa: D107
        self.args = args

    def __getstate__(self):
        return self.args

    def __setstate__(self, state) -> None:
        self.args = state


def _run_step_on_dask_worker(dependencies, payload: _Opaque) -> _Opaque:
    """Dask task: execute one step (dagster-dask's worker function) and return its events opaque."""
    from dagster_dask.executor import query_on_dask_worker

    return _Opaque(tuple(query_on_dask_worker(dependencies, *payload.args)))


def _dask_executor_def() -> ExecutorDefinition:
    """``gem_dask``: dagster-dask's executor definition (same config) running :class:`GemDaskExecutor`."""
    try:
        from dagster_dask import dask_executor
        from dagster_dask.executor import DaskExecutor, get_dask_resource_requirements
    except ImportError as exc:  # pragma: no cover - the dist extra is installed by make
        raise ImportError("GEM_EXECUTOR=dask needs dagster-dask: pip install -e '.[dist]'") from exc
    from dagster import executor, multiple_process_executor_requirements

    # Dagster's private names GemDaskExecutor needs; fails here, when the executor is built, with
    # a clear error if dagster / dagster-dask are not the releases it was written for
    from gem_assets.defs import _compat

    class GemDaskExecutor(DaskExecutor):
        """dagster-dask's executor with opaque task arguments and run-scoped task keys."""

        def execute(self, plan_context, execution_plan):
            if self.cluster_type not in ("existing", "local"):  # other clusters: unpatched upstream code
                yield from super().execute(plan_context, execution_plan)
                return
            import dask.distributed

            if not plan_context.instance.is_persistent:
                raise ValueError("Dask execution requires a persistent Dagster instance")
            job_name, run = plan_context.job_name, plan_context.dagster_run
            instance_ref = plan_context.instance.get_ref()
            if self.cluster_type == "existing":
                cluster, owned = self.cluster_configuration["address"], None
            else:
                cluster = owned = dask.distributed.LocalCluster(**self.build_dict(job_name))
            try:
                with dask.distributed.Client(cluster) as client:
                    by_step, ordered = {}, []
                    for level in execution_plan.get_steps_to_execute_by_level():
                        for step in level:
                            deps = [by_step[k] for inp in step.step_inputs for k in inp.dependency_keys]
                            payload = _Opaque((plan_context.reconstructable_job, run, plan_context.run_config,
                                               [step.key], instance_ref, execution_plan.known_state))
                            fut = client.submit(_run_step_on_dask_worker, deps, payload, pure=False,
                                                key=f"{job_name}.{step.key}.{run.run_id}",
                                                resources=get_dask_resource_requirements(step.tags))
                            by_step[step.key] = fut
                            ordered.append(fut)
                    done = dask.distributed.as_completed(ordered, with_results=True)
                    for _, result in _compat.iterate_with_interrupts(done):
                        for event in result.args:
                            assert isinstance(event, _compat.DagsterEvent)
                            yield event
            finally:
                if owned is not None:
                    owned.close()

    @executor(name="gem_dask", config_schema=dask_executor.config_schema,
              requirements=multiple_process_executor_requirements())
    def gem_dask_executor(init_context):
        ((cluster_type, cluster_configuration),) = init_context.executor_config["cluster"].items()
        return GemDaskExecutor(cluster_type, cluster_configuration)

    return gem_dask_executor


def executor_from_env(env: Mapping[str, str] | None = None) -> ExecutorDefinition:
    """The executor selected by ``GEM_EXECUTOR`` and ``GEM_MAX_CONCURRENT``."""
    return build_executor(ExecutionSettings.from_env(env))


# --------------------------------------------------------------------------- dispatching runs
def failure_message(result) -> str:
    """The first step failure of a finished run (in process or not), as one line: a step that failed
    after its retries (``RetryPolicy``) gives its last attempt's error, with the retries counted."""
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            if data is not None and data.user_failure_data is not None and data.user_failure_data.description:
                return data.user_failure_data.description
            if data is not None and data.error is not None:
                err, after = data.error, ""
                while err.message and err.message.startswith("Exceeded max_retries") and err.cause is not None:
                    after = f" ({err.message.strip().replace('Exceeded max_retries of', 'failed after')} retries)"
                    err = err.cause
                    while err.cls_name == "RetryRequested" and err.cause is not None:
                        err = err.cause
                line = err.message.strip().splitlines()[-1] if err.message and err.message.strip() else err.cls_name
                return line + after
    return "run failed (see the run's logs in the UI)"


def load_asset_job(module_name: str | None, python_file: str | None, attribute: str, nonce: str = ""):
    """Reconstructor of :func:`reconstructable_asset_job`: the job ``gem_assets_job`` (every asset) of the
    ``Definitions`` at ``module_name:attribute`` or ``python_file:attribute`` (``nonce`` only makes
    code pointers with different environments distinct: Dagster caches a job per pointer)."""
    import importlib
    import importlib.util

    if module_name is not None:
        module = importlib.import_module(module_name)
    else:
        path = os.path.abspath(python_file)
        name = f"gem_location_{abs(hash((path, nonce)))}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    import warnings

    with warnings.catch_warnings():  # get_job_def is the public way to an asset job given to Definitions
        warnings.filterwarnings("ignore", message="Found asset job named", category=UserWarning)
        return getattr(module, attribute).get_job_def("gem_assets_job")


def reconstructable_asset_job(module_name: str | None = None, python_file: str | None = None,
                              attribute: str = "defs", working_directory: str | None = None):
    """A code pointer (public ``build_reconstructable_job``) to ``gem_assets_job`` (every asset) of a code
    location: what runs whose steps leave this process (multiprocess, Dask, k8s) are launched from."""
    from dagster import build_reconstructable_job

    if (module_name is None) == (python_file is None):
        raise ValueError("give exactly one of module_name and python_file")
    nonce = "|".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(("GEM_", "AWS_")))
    return build_reconstructable_job("gem_assets.defs.executors", "load_asset_job",
                                     reconstructable_args=(module_name, python_file, attribute, nonce),
                                     reconstructor_working_directory=working_directory or os.getcwd())


@dataclass(frozen=True)
class JobRequest:
    """One run to launch: a reconstructable job, the assets to materialize (``None``: all), an
    optional partition, and a label for messages."""

    job: object
    label: str
    partition_key: str | None = None
    asset_selection: tuple | None = None


def _execute_one(instance_ref, request: JobRequest, run_config: dict, tags: dict) -> tuple[str, bool, str, list]:
    """Run one job from its code pointer with its own executor (in a worker process or inline).
    Returns ``(label, success, message, materialized asset keys)``."""
    from dagster import DagsterInstance, execute_job

    run_tags = dict(tags)
    if request.partition_key is not None:
        run_tags["dagster/partition"] = request.partition_key
    selection = list(request.asset_selection) if request.asset_selection is not None else None
    with DagsterInstance.from_ref(instance_ref) as instance:
        with execute_job(request.job, instance=instance, run_config=run_config, tags=run_tags,
                         asset_selection=selection) as result:
            done = [e.asset_key for e in result.get_asset_materialization_events()]
            return request.label, bool(result.success), "" if result.success else failure_message(result), done


def run_jobs(instance, requests: Sequence[JobRequest], *, parallel: int = 1, run_config: dict | None = None,
             tags: dict | None = None, on_done=None) -> dict[str, tuple[str | None, list]]:
    """Launch runs from code pointers, up to ``parallel`` at once, each in its own process.

    Each run uses the executor its job was defined with (e.g. the multiprocess executor, whose
    steps are processes of their own). With ``parallel > 1`` runs are spread over worker
    processes (spawned: threads would share one Dagster run context per process).

    Parameters
    ----------
    instance : DagsterInstance
        A persistent instance (its ref is handed to the workers).
    requests : sequence of JobRequest
        The runs (``job``: a reconstructable job, e.g. :func:`reconstructable_asset_job`).
    parallel : int
        Runs at once.
    run_config, tags : dict, optional
        Given to every run.
    on_done : callable, optional
        ``on_done(label, success, message)`` as each run ends (in completion order).

    Returns
    -------
    dict of str to (str or None, list of AssetKey)
        Label to (``None`` for a successful run, else its first failure message; the assets it
        materialized).
    """
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    if not instance.is_persistent:
        raise ValueError("runs launched from a code pointer need a persistent Dagster instance "
                         "(DagsterInstance.get() or instance_for_test()), not an ephemeral one")
    ref = instance.get_ref()
    run_config = run_config or {}
    tags = tags or {}
    out: dict[str, tuple[str | None, list]] = {}

    def record(label: str, ok: bool, message: str, done: list) -> None:
        out[label] = (None if ok else message, done)
        if on_done is not None:
            on_done(label, ok, message)

    if parallel == 1 or len(requests) <= 1:
        for r in requests:
            record(*_execute_one(ref, r, run_config, tags))
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=min(parallel, len(requests)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_execute_one, ref, r, run_config, tags): r for r in requests}
        for fut in as_completed(futures):
            r = futures[fut]
            try:
                record(*fut.result())
            except Exception as exc:  # a crashed worker fails its run only
                record(r.label, False, f"{type(exc).__name__}: {exc}", [])
    return out
