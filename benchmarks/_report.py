"""Writing a benchmark's section into a Markdown page of docs/.

Every benchmark that documents its result writes one section, delimited by markers that name it::

    <!-- bench:NAME -->
    Measured 2026-12-03 on x86_64, 2 CPU cores: `python benchmarks/NAME.py --write docs/benchmarks.md`.

    | the table ... |

    Reading: what the table shows.
    <!-- /bench:NAME -->

The first line gives the day (no time of day), the machine and the exact command that produced the
section (:func:`header`); the table and its reading follow. ``--write FILE`` replaces the section
between the markers in place (:func:`write_section`), so a page keeps one section per benchmark and
no older copy of it. A page that has no such section yet gets one appended under a heading.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

__all__ = ["today", "load_average", "machine", "command", "header", "section", "write_section", "markers"]


def today() -> str:
    """The day, ``YYYY-MM-DD`` (no time of day: a section says when, not at what hour)."""
    return time.strftime("%Y-%m-%d")


def load_average() -> float | None:
    """The 1-minute load average now (None where the system does not report it)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine(load: float | None = None, extra: str = "") -> str:
    """``x86_64, 2 CPU cores`` (the architecture and the CPU count), any further words (``extra``:
    library versions, threads, a GPU) and the 1-minute load average taken when the run started
    (``load``, from :func:`load_average`: timings on a shared machine read with it)."""
    text = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    if extra:
        text += f", {extra}"
    if load is not None:
        text += f", 1-minute load average {load:.1f} at the start"
    return text


def command(argv: list[str] | None = None) -> str:
    """The command line that ran this benchmark, as a user would type it from the repository root:
    ``python benchmarks/<script>.py <its arguments>``."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        script = Path("benchmarks") / script.name
    return shlex.join(["python", script.as_posix(), *argv[1:]])


def header(date: str | None = None, on: str | None = None, cmd: str | None = None) -> str:
    """The section's one line: ``Measured <day> on <machine>: `<command>`.``"""
    return f"Measured {date or today()} on {on or machine()}: `{cmd or command()}`."


def section(*parts: str, date: str | None = None, on: str | None = None, cmd: str | None = None) -> str:
    """:func:`header`, then each non-empty part (tables, the reading) as its own paragraph."""
    return "\n\n".join([header(date, on, cmd), *[p.strip("\n") for p in parts if p and p.strip()]])


def markers(name: str) -> tuple[str, str]:
    """The opening and closing markers of section ``name``."""
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def write_section(path: Path | str, name: str, text: str, title: str | None = None) -> None:
    """Replace section ``name`` of the Markdown file ``path`` with ``text``.

    The markers stay; everything between them is replaced. A file without the section gets it
    appended under ``## title`` (``name`` when no title is given).
    """
    path = Path(path)
    start, end = markers(name)
    doc = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{start}\n{text.strip(chr(10))}\n{end}"
    if start in doc:
        i = doc.index(start)
        j = doc.index(end, i) + len(end)
        doc = doc[:i] + block + doc[j:]
    else:
        doc = doc.rstrip("\n") + f"\n\n## {title or name}\n\n{block}\n"
    path.write_text(doc, encoding="utf-8")
    print(f"wrote section {name!r} of {path}", flush=True)
