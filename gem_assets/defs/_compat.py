"""The one module of ``gem_assets`` that imports Dagster's private API (``dagster._*``).

Why it exists
-------------
``GEM_EXECUTOR=dask`` runs :class:`gem_assets.defs.executors.GemDaskExecutor`, a subclass of
dagster-dask's ``DaskExecutor`` whose ``execute`` is a copy of dagster-dask 0.29.27's with two
upstream bugs fixed, for the ``existing`` and ``local`` cluster types:

1. dagster-dask passes the step's arguments (the ``DagsterRun``, the run config, the instance
   ref, the plan's known state, ...) to ``Client.submit`` as positional arguments. Dask's task
   spec walks the tuples it is handed, and Dagster's ``@record`` classes refuse iteration, so
   every partitioned run fails with "Iteration is not allowed on `@record`
   KeyRangesPartitionsSubset" (found with dask/distributed 2026.8.0). The fix wraps the
   arguments in an opaque holder.
2. dagster-dask names a step's Dask task ``<job>.<step>``, so two concurrent runs of one job on a
   shared cluster collide (dagster-io/dagster#21418). The fix adds the run id to the key.

Re-implementing ``execute`` needs three names that dagster-dask's own loop uses and that Dagster
does not export publicly: ``raise_execution_interrupts`` (``dagster._core.errors``) and
``iterate_with_context`` (``dagster._utils``), which let a ``SIGINT`` interrupt the wait for
the Dask futures as ``DagsterExecutionInterruptedError``, and ``DagsterEvent``
(``dagster._core.events``), the type of the events the workers send back. They are imported here
and nowhere else (``gem_assets_tests/test_compat.py`` checks both).

Pinned versions
---------------
Written for and tested with **dagster 1.13.27** and **dagster-dask 0.29.27** (pyproject's ``dist``
extra pins ``dagster-dask==0.29.27``, which itself requires ``dagster==1.13.27``). Private names
move between Dagster releases without notice, and ``GemDaskExecutor`` copies dagster-dask's code,
so :func:`check_versions` refuses any other version with an error saying what to do; it runs when
this module is imported, i.e. when ``GEM_EXECUTOR=dask`` builds its executor
(:func:`gem_assets.defs.executors.build_executor`), not for the other executors. When dagster-dask
fixes both bugs upstream, drop ``GemDaskExecutor`` and this module and use ``dask_executor``.
"""

from __future__ import annotations

from importlib import metadata
from typing import Iterable, Iterator, TypeVar

import dagster

__all__ = ["DAGSTER_VERSION", "DAGSTER_DASK_VERSION", "DagsterCompatError", "check_versions",
           "DagsterEvent", "ExecutionInterrupted", "iterate_with_interrupts"]

#: The Dagster release the private imports below were written for.
DAGSTER_VERSION = "1.13.27"
#: The dagster-dask release whose ``DaskExecutor.execute`` ``GemDaskExecutor`` copies.
DAGSTER_DASK_VERSION = "0.29.27"

T = TypeVar("T")


class DagsterCompatError(RuntimeError):
    """The installed dagster or dagster-dask is not the release this module was written for."""


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_versions(dagster_version: str | None = None, dagster_dask_version: str | None = None) -> None:
    """Raise :class:`DagsterCompatError` unless dagster (and dagster-dask, when installed) are the
    pinned releases.

    Parameters
    ----------
    dagster_version, dagster_dask_version : str, optional
        The versions to check; default: the installed ones (dagster-dask may be absent).
    """
    found = dagster_version if dagster_version is not None else dagster.__version__
    found_dask = dagster_dask_version if dagster_dask_version is not None else _installed("dagster-dask")
    wrong = []
    if found != DAGSTER_VERSION:
        wrong.append(f"dagster {found} (written for {DAGSTER_VERSION})")
    if found_dask is not None and found_dask != DAGSTER_DASK_VERSION:
        wrong.append(f"dagster-dask {found_dask} (written for {DAGSTER_DASK_VERSION})")
    if wrong:
        raise DagsterCompatError(
            "gem_assets/defs/_compat.py imports Dagster's private API for GEM_EXECUTOR=dask "
            "(GemDaskExecutor, a patched copy of dagster-dask's executor) and was written for "
            f"dagster=={DAGSTER_VERSION} with dagster-dask=={DAGSTER_DASK_VERSION}; installed: "
            + ", ".join(wrong) + ". Install the pinned versions (pip install -e '.[dist]'), or re-check "
            "the private imports in gem_assets/defs/_compat.py and GemDaskExecutor.execute against the "
            "installed release and update the pins; other executors do not use this module.")


check_versions()

from dagster._core.errors import DagsterExecutionInterruptedError as ExecutionInterrupted  # noqa: E402
from dagster._core.errors import raise_execution_interrupts  # noqa: E402
from dagster._core.events import DagsterEvent  # noqa: E402
from dagster._utils import iterate_with_context  # noqa: E402


def iterate_with_interrupts(iterator: Iterable[T]) -> Iterator[T]:
    """Iterate ``iterator``, turning a ``SIGINT`` received while waiting for its next item into
    :class:`ExecutionInterrupted` (dagster's ``DagsterExecutionInterruptedError``), as Dagster's
    executors do while they wait for steps (only on the main thread; elsewhere it just iterates)."""
    return iterate_with_context(raise_execution_interrupts, iter(iterator))
