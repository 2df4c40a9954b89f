"""Dagster's private API is imported in one module only, and that module works on the installed release.

``gem_assets/defs/_compat.py`` holds every ``dagster._*`` import of the product (for
``GemDaskExecutor``, the patched dagster-dask executor); these tests take seconds and start no
Dask cluster.
"""

from __future__ import annotations

import ast
import signal
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("gem_assets", "benchmarks")
COMPAT = ROOT / "gem_assets" / "defs" / "_compat.py"


def _private_dagster_uses(path: Path) -> list[str]:
    """``dagster._*`` imports of a source file, and string constants naming such a module
    (``importlib.import_module("dagster._...")``), as ``line: what``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and " " not in node.value:
            names = [node.value]
        found += [f"{node.lineno}: {n}" for n in names if n.startswith("dagster._") or n.startswith("dagster_dask._")]
    return found


def test_no_product_module_but_compat_imports_private_dagster():
    files = [p for d in PRODUCT for p in sorted((ROOT / d).rglob("*.py"))]
    assert COMPAT in files and len(files) > 20
    offenders = {str(p.relative_to(ROOT)): uses for p in files if p != COMPAT and (uses := _private_dagster_uses(p))}
    assert offenders == {}, f"import Dagster's private API only in gem_assets/defs/_compat.py: {offenders}"
    assert _private_dagster_uses(COMPAT), "the scan finds _compat.py's own private imports"


def test_compat_is_pinned_to_the_installed_release():
    import dagster

    from gem_assets.defs import _compat

    assert dagster.__version__ == _compat.DAGSTER_VERSION
    _compat.check_versions()  # the installed versions pass
    with pytest.raises(_compat.DagsterCompatError, match=r"dagster 1\.14\.0 \(written for 1\.13\.27\)"):
        _compat.check_versions(dagster_version="1.14.0")
    with pytest.raises(_compat.DagsterCompatError, match=r"dagster-dask 0\.30\.0 .*pip install"):
        _compat.check_versions(dagster_dask_version="0.30.0")


def test_iterate_with_interrupts_yields_everything_and_turns_sigint_into_an_interrupt():
    from gem_assets.defs import _compat

    assert list(_compat.iterate_with_interrupts(iter([1, 2, 3]))) == [1, 2, 3]
    assert list(_compat.iterate_with_interrupts([])) == []
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be replaced on the main thread")
    before = signal.getsignal(signal.SIGINT)

    def interrupted_while_waiting():
        yield 1
        signal.raise_signal(signal.SIGINT)  # the handler runs before the next item is returned
        yield 2

    seen = []
    with pytest.raises(_compat.ExecutionInterrupted):
        for item in _compat.iterate_with_interrupts(interrupted_while_waiting()):
            seen.append(item)
    assert seen == [1]
    assert signal.getsignal(signal.SIGINT) == before  # the original handler is back


def test_dagster_event_is_the_type_runs_emit():
    from dagster import asset, materialize

    from gem_assets.defs import _compat

    @asset
    def one() -> int:
        return 1

    result = materialize([one])
    assert result.success
    assert result.all_events and all(isinstance(e, _compat.DagsterEvent) for e in result.all_events)


def test_dask_executor_definition_builds_through_compat():
    pytest.importorskip("dagster_dask")
    from gem_assets.defs.executors import ExecutionSettings, build_executor

    exe = build_executor(ExecutionSettings(executor="dask", max_concurrent=1))
    assert exe.name == "gem_dask"
