"""Declarative automation of the code location: one automation condition per asset, two sensors.

Everything here is on by default when the code location is loaded with a daemon
(``dagster dev -w workspace.yaml`` or ``make ui``); turn either sensor off in the UI
(Automation tab) to stop it. ``make run`` does the same work in one process without a daemon.

Conditions (:data:`CONDITIONS`, applied by :func:`with_automation`)
-------------------------------------------------------------------
Two families. Both wait until no input is missing or running and no input's latest
materialization failed one of its **blocking** checks: a shard whose ``documents`` failed
``document_conservation`` is not embedded, a proxy corpus that failed ``documents_conserved``
is not trained on. (Not ``all_deps_blocking_checks_passed()``: it also blocks an asset whose
input is requested on the same tick, so a new shard would move one layer per tick, and a
check never evaluated would block for ever; see :func:`_no_failed_blocking_checks`.) An
unpartitioned asset cannot share a run with shard partitions: ``domain_stats`` and
``teacher_sample`` follow on the tick after their shard partitions are built. The aggregates
(``domain_stats`` and every refit) also wait until one of their inputs exists or is requested on
the same tick: on a fresh instance with no shard partition registered yet, nothing is requested.

``per_shard`` (``documents``, ``embeddings``, ``domain_assignments``) and ``aggregate``
(``domain_stats``)
    ``eager()``: a partition is requested as soon as one of its inputs has a new data version
    (a new or edited shard file, observed by ``observe_shards``; a refit student) and none of its
    inputs is missing or in progress. The work is per shard (or, for ``domain_stats``, a cheap
    sum of per-shard counts), so reacting at once costs little and keeps the shards current.
    ``eager()`` alone neither builds partitions that were already missing when the condition
    was first evaluated nor reacts to code versions (a parameter or logic change), so two
    terms are added:

    * *missing*: a missing partition is requested once, and again after each nightly tick
      (:data:`NIGHTLY_CRON`) while it stays missing: new partitions, the partitions that
      existed before the daemon first ran, and failed ones, retried once a day rather than on
      every tick.
    * *code changed*: after the nightly tick, every partition of an asset whose code version
      changed since it was last requested is requested: the scheduled backfill of shards made
      stale by a parameter or logic change, at night rather than while someone is editing.

    Together they are the nightly backfill of missing and out-of-date shard partitions.

``refit`` (``teacher_sample``, ``teacher_clusters``, ``student_model``, ``taxonomy``,
``proxy_corpus``, ``doremi_weights``, ``regmix_runs``, ``regmix_weights``, ``curated_mixture``,
``mixture_evaluation``)
    ``on_cron(NIGHTLY_CRON)``: after the nightly tick, once all of its inputs have updated since
    that tick. These read every shard (a sample of all embeddings, a fit over all assignments,
    proxy model training), so refitting after every shard would redo minutes of work per shard
    and the results of a half-updated corpus are not worth keeping: at most one refit a day, and
    only when the inputs changed. The chain follows in one night: the shards backfilled at the
    tick update the teacher's inputs, the new teacher the student's, and so on. Plus:

    * *missing*: built once as soon as its inputs exist (no refit is waiting for a night that
      may be hours away; the downstream per-shard assets are blocked until it exists), retried
      after each nightly tick or when an input updates while it stays missing.
    * *code changed*: a parameter or logic change (a new code version, e.g. ``GEM_K``) refits
      after the next nightly tick even if the inputs are unchanged.

``shard_files`` (the observable source) has no condition on purpose: the daemon would launch one
observation run per partition, and each observes every shard. The shard sensor requests one
``observe_shards`` run instead. Every condition ignores ``shard_manifest`` (the corpus-wide source
the aggregates depend on so that the UI's stale flag holds from 100 shards on): they react to the
per-shard assets themselves, and ``on_cron``'s "all inputs updated since the tick" would otherwise
wait for an observation on nights without a new file.

Sensors
-------
``gem_automation`` (:class:`~dagster.AutomationConditionSensorDefinition`, RUNNING by default)
    Evaluates the conditions every 30 s. When more than one partition of an asset is requested on
    one tick it launches an asset backfill (``emit_backfills``), which runs the partitions and the
    assets downstream of them in dependency order.
``shard_sensor`` (RUNNING by default, every 30 s)
    Registers every new shard file as a ``shards`` partition and requests an ``observe_shards``
    run when a shard file is new or changed (its size or modification time differs from the
    cursor). It never deletes a partition whose file vanished: deleting a dynamic partition
    does not delete its materializations or its files under ``GEM_HOME``, the refits would
    still include the vanished shard's outputs until the next refit, and a file that is only
    briefly unreachable (an object-store hiccup, a shard being rewritten) would lose its history.
    Vanished shards are logged on the tick; delete their partitions in the UI (Partitions tab of
    ``documents``) once their outputs are not wanted.

Staleness itself (code versions, data versions, the observable source) is described in
docs/pipeline.md, "Staleness and automation".
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable, Mapping, Sequence

from dagster import (
    AssetsDefinition,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from gem_assets.defs.partitions import SHARDS, shards_partitions
from gem_assets.resources.config import GemConfig

__all__ = [
    "NIGHTLY_CRON",
    "CONDITIONS",
    "REASONS",
    "per_shard_condition",
    "refit_condition",
    "with_automation",
    "automation_sensor",
    "build_shard_sensor",
    "automation_sensors",
]

#: The nightly tick, 03:00 GMT (``on_cron``'s default time zone, Coordinated Universal Time): missing shards and
#: code changes are backfilled, refits follow their inputs.
NIGHTLY_CRON = "0 3 * * *"

#: Name of the observation job of the ``shard_files`` source (``gem_assets/defs/shards.py``).
OBSERVE_JOB = "observe_shards"
#: The observable source of the shard files (``gem_assets/defs/shards.py``).
SHARD_SOURCE = "shard_files"
#: The observable source of the whole corpus (``gem_assets/defs/shards.py``): every condition ignores it.
MANIFEST_SOURCE = "shard_manifest"


def _missing_term(cron: str) -> AutomationCondition:
    """Missing, and not requested since the last cron tick (or an input updated since the last request)."""
    requested_since_tick = AutomationCondition.newly_requested().since(AutomationCondition.cron_tick_passed(cron))
    deps_updated_since_request = AutomationCondition.any_deps_updated().since(AutomationCondition.newly_requested())
    return (AutomationCondition.missing()
            & (~requested_since_tick | deps_updated_since_request)).with_label("missing (once, then nightly)")


def _code_changed_term(cron: str) -> AutomationCondition:
    """The cron tick passed and the code version changed, both since the asset was last handled."""
    return (AutomationCondition.cron_tick_passed(cron).since_last_handled()
            & AutomationCondition.code_version_changed().since_last_handled()).with_label("code changed (nightly)")


def _no_deps_missing() -> AutomationCondition:
    """No input missing (and not requested on this tick); the shard source does not count.

    A registered shard partition of the observable source ``shard_files`` counts as missing to
    ``any_deps_missing()`` (sources have no materializations), which would block ``documents``
    for ever; a vanished file fails the ``documents`` run instead.
    """
    return ~AutomationCondition.any_deps_missing().ignore(AssetSelection.assets(SHARD_SOURCE)).with_label(
        "any_deps_missing (sources aside)")


def _no_failed_blocking_checks() -> AutomationCondition:
    """No input's latest materialization failed one of its blocking checks.

    Used instead of ``all_deps_blocking_checks_passed()``, which also blocks an asset whose input
    will be requested on the same tick (that input's checks are not requested by themselves), so a
    new shard would move one layer per tick and a fresh instance could not build the graph in one
    backfill; and an input whose blocking check has never been evaluated (a check added later)
    would block it for ever. A check that fails inside a run still stops the steps downstream
    in that run (Dagster's blocking checks).
    """
    return ~AutomationCondition.any_deps_match(
        AutomationCondition.any_checks_match(AutomationCondition.check_failed(), blocking_only=True)
    ).with_label("no input failed a blocking check")


def _has_input() -> AutomationCondition:
    """At least one input (partition) exists; the shard source does not count.

    An aggregate over the shard partitions (``teacher_sample``, ``domain_stats``) sees no input
    missing while no shard partition is registered (zero partitions, none missing), so on a fresh
    instance the daemon's first tick, which may come before the shard sensor's, would launch a run
    over zero shards that can only fail. It waits for its first input instead (one requested on the
    same tick counts, so a missing chain is still built in one run).
    """
    exists = ~AutomationCondition.missing() | AutomationCondition.will_be_requested()
    return AutomationCondition.any_deps_match(exists).ignore(
        AssetSelection.assets(SHARD_SOURCE)).with_label("an input exists or is requested")


def _ready() -> AutomationCondition:
    """No input missing or running, not running itself, no input failed a blocking check."""
    return (_no_deps_missing()
            & ~AutomationCondition.any_deps_in_progress()
            & ~AutomationCondition.in_progress()
            & _no_failed_blocking_checks())


def _eager() -> AutomationCondition:
    """``eager()`` with the shard source aside in its ``any_deps_missing``."""
    return AutomationCondition.eager().replace("any_deps_missing", ~_no_deps_missing())


def per_shard_condition(cron: str = NIGHTLY_CRON, *, aggregate: bool = False) -> AutomationCondition:
    """``eager()``, or missing, or code changed at the nightly tick; inputs present and their blocking checks passed.

    ``aggregate=True`` (``domain_stats``, unpartitioned over the shard partitions) also waits until
    one of its inputs exists.
    """
    ready = _ready() & _has_input() if aggregate else _ready()
    return ((_eager() | _missing_term(cron) | _code_changed_term(cron)) & ready).ignore(
        AssetSelection.assets(MANIFEST_SOURCE)).with_label("per_shard")


def refit_condition(cron: str = NIGHTLY_CRON) -> AutomationCondition:
    """``on_cron(cron)``, or missing, or code changed at the nightly tick; inputs present (at least one) and their
    blocking checks passed."""
    return ((AutomationCondition.on_cron(cron) | _missing_term(cron) | _code_changed_term(cron))
            & _ready() & _has_input()).ignore(AssetSelection.assets(MANIFEST_SOURCE)).with_label("refit")


_PER_SHARD = per_shard_condition()
_AGGREGATE = per_shard_condition(aggregate=True)
_REFIT = refit_condition()

#: Asset key -> (condition, why). Every materializable asset of the code location has a row
#: (gem_assets_tests/test_automation.py checks it); the source ``shard_files`` has none (see above).
TABLE: dict[str, tuple[AutomationCondition, str]] = {
    "documents": (_PER_SHARD, "per shard, seconds per shard: validate a new or edited shard file at once"),
    "embeddings": (_PER_SHARD, "per shard, the model's forward pass: embed each new shard's documents at once, "
                               "so the nightly teacher refit only samples"),
    "domain_assignments": (_PER_SHARD, "per shard, the student labels one shard in seconds: new shards are "
                                       "labelled as they arrive; a refit student relabels every shard"),
    "domain_stats": (_AGGREGATE, "cheap aggregate (sums of per-shard counts): follows the assignments at once"),
    "teacher_sample": (_REFIT, "reads every shard's embeddings: at most nightly, only when they changed"),
    "teacher_clusters": (_REFIT, "the GEM fit (minutes): nightly after a new sample"),
    "student_model": (_REFIT, "trained on the teacher's labels of every shard: nightly after a new teacher"),
    "taxonomy": (_REFIT, "names the domains from every shard's terms: nightly after new assignments"),
    "mixture_evaluation": (_REFIT, "trains many proxy models (minutes): nightly after new assignments"),
    "proxy_corpus": (_REFIT, "a byte sample of every domain: nightly after new domain stats"),
    "doremi_weights": (_REFIT, "trains proxy models: nightly after a new proxy corpus"),
    "regmix_runs": (_REFIT, "trains many proxy models: nightly after a new proxy corpus"),
    "regmix_weights": (_REFIT, "fits a regressor over the runs: nightly after new runs"),
    "curated_mixture": (_REFIT, "writes the whole mixture: nightly after new weights"),
}

#: Asset key -> condition.
CONDITIONS: dict[str, AutomationCondition] = {k: c for k, (c, _) in TABLE.items()}
#: Asset key -> the reason for its condition.
REASONS: dict[str, str] = {k: r for k, (_, r) in TABLE.items()}


def with_automation(assets: Iterable, conditions: Mapping[str, AutomationCondition] | None = None) -> list:
    """The assets with their automation condition from :data:`CONDITIONS` (others unchanged).

    Parameters
    ----------
    assets : iterable
        Assets definitions (and source assets, returned as they are).
    conditions : mapping of str to AutomationCondition, optional
        Asset key (user string) to condition; default :data:`CONDITIONS`.

    Returns
    -------
    list
    """
    table = CONDITIONS if conditions is None else conditions

    def _apply(spec):
        cond = table.get(spec.key.to_user_string())
        return spec if cond is None else spec.replace_attributes(automation_condition=cond)

    out = []
    for a in assets:
        if isinstance(a, AssetsDefinition) and a.is_materializable:
            out.append(a.map_asset_specs(_apply))
        else:
            out.append(a)
    return out


#: Evaluates every asset's condition; ON by default for this code location.
automation_sensor = AutomationConditionSensorDefinition(
    "gem_automation",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the automation condition of every asset (gem_assets/defs/automation.py).",
)


def _cursor(raw) -> dict:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _signatures(shards: Mapping) -> dict[str, list]:
    from gem_assets.lib.io.storage import file_signature

    return {key: [str(x) for x in file_signature(path)] for key, path in shards.items()}


def build_shard_sensor(observe_job=None,
                       minimum_interval_seconds: int = 30):
    """The shard sensor: register new shard files as partitions, observe new or changed files.

    Parameters
    ----------
    observe_job : JobDefinition or the result of define_asset_job, optional
        The ``observe_shards`` job; without it the sensor only registers partitions.
    minimum_interval_seconds : int

    Returns
    -------
    SensorDefinition
    """
    target = {"job": observe_job} if observe_job is not None else {}

    @sensor(name="shard_sensor", minimum_interval_seconds=minimum_interval_seconds,
            default_status=DefaultSensorStatus.RUNNING, **target)
    def shard_sensor(context: SensorEvaluationContext, gem: GemConfig) -> SensorResult:
        """Register new shard files as partitions; request an observation when a file is new or changed."""
        shards = gem.shards()
        sigs = _signatures(shards)
        old = _cursor(context.cursor)
        registered = set(context.instance.get_dynamic_partitions(SHARDS))
        new = sorted(set(shards) - registered)
        changed = sorted(k for k, sig in sigs.items() if old.get(k) != sig)
        vanished = sorted(registered - set(shards))
        if vanished:
            context.log.warning(f"{len(vanished)} registered shard(s) have no file any more (partitions kept): "
                                f"{vanished[:10]}")
        partition_requests = [shards_partitions.build_add_request(new)] if new else []
        runs = []
        if changed and observe_job is not None:
            digest = hashlib.sha256(json.dumps(sigs, sort_keys=True).encode()).hexdigest()[:16]
            runs.append(RunRequest(run_key=f"observe@{digest}",
                                   tags={"gem/reason": f"{len(changed)} new or changed shard file(s)"}))
        cursor = json.dumps(sigs, sort_keys=True)
        if not runs and not partition_requests:
            return SensorResult(skip_reason=f"{len(shards)} shard(s), none new or changed", cursor=cursor)
        context.log.info(f"{len(new)} new partition(s), {len(changed)} new or changed file(s)")
        return SensorResult(run_requests=runs, dynamic_partitions_requests=partition_requests, cursor=cursor)

    return shard_sensor


def _observe_job(jobs: Sequence = ()):
    return next((job for job in jobs if getattr(job, "name", None) == OBSERVE_JOB), None)


def automation_sensors(jobs: Sequence = ()) -> list:
    """The code location's sensors: ``gem_automation`` and ``shard_sensor`` (targeting ``observe_shards`` if it exists)."""
    return [automation_sensor, build_shard_sensor(_observe_job(jobs))]
