"""Bad input never blocks good input, through the real ``make run`` entry point (``python -m
gem_assets.run``): a corpus with every class of bad record, a duplicate id across shards and a file
that is not Parquet; the GEM_ON_BAD_SHARD policy; and a run killed with SIGKILL, twice, that resumes to the outputs of an
uninterrupted run.

The runs are subprocesses over the code location gem_assets_tests/distributed_defs.py (resources from
the GEM_* environment, the hashing embedder of conftest.py, MLflow off), smoke profile, K=3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from dagster import materialize

from conftest import make_docs, make_resources, write_jsonl
from gem_assets.config import PROFILES, Layout
from gem_assets.defs import bad_shards
from gem_assets.defs.corpus import documents
from gem_assets.defs.embeddings import embeddings
from gem_assets.defs.partitions import SHARDS
from gem_assets.defs.teacher import teacher_sample
from gem_assets.lib.corpus.duplicates import cross_shard_duplicates
from gem_assets.lib.corpus.validation import max_record_bytes

HERE = Path(__file__).resolve().parent
DEFS_FILE = HERE / "distributed_defs.py"
BIG = 2_000_000  # characters of the over-long text

#: b-bad.jsonl's quarantine: (record index, line number, id, reason). The truncated line and the
#: 2 MB one (not read: only its first bytes are kept) have no id that could be read.
QUARANTINED = [(5, 6, "bad-null", "null_text"), (6, 7, "bad-empty", "empty_text"), (7, 8, "bad-space", "empty_text"),
               (8, 9, "bad-notext", "missing_text"), (16, 17, None, "too_long"), (17, 18, "b0003", "duplicate_id"),
               (18, 19, "bad-utf8", "invalid_utf8"), (19, 20, None, "invalid_json"),
               (20, 21, "bad-number", "text_not_string")]
HUGE = json.dumps({"id": "bad-huge", "text": "w" * BIG, "source": "sport"}).encode()


def _bad_input_corpus(root: Path) -> Path:
    """a-good.jsonl: 24 articles. b-bad.jsonl: 16 articles, the 9 bad records of every class (null,
    empty and whitespace-only text, no text field, a 2 MB text, an id already in the shard with
    other text, invalid UTF-8 bytes, a truncated line, a number where the text should be) and an
    article whose id a-good.jsonl has (a duplicate across shards). c-corrupt.parquet: not Parquet."""
    write_jsonl(root / "a-good.jsonl", make_docs(24, seed=1, prefix="a"))
    good = [json.dumps(r).encode() for r in make_docs(16, seed=2, prefix="b")]
    bad = [
        json.dumps({"id": "bad-null", "text": None, "source": "sport"}).encode(),
        json.dumps({"id": "bad-empty", "text": "", "source": "sport"}).encode(),
        json.dumps({"id": "bad-space", "text": "  \n\t  ", "source": "sport"}).encode(),
        json.dumps({"id": "bad-notext", "body": "the text is under another key", "source": "sport"}).encode(),
        HUGE,
        json.dumps({"id": "b0003", "text": "other text under an id this shard already has", "source": "sport"}).encode(),
        b'{"id": "bad-utf8", "text": "broken \xff\xfe bytes", "source": "sport"}',
        b'{"id": "bad-truncated", "text": "this line was cut in the mid',
        json.dumps({"id": "bad-number", "text": 12345, "source": "sport"}).encode(),
    ]
    across = json.dumps({"id": "a0007", "text": "another article under an id a-good.jsonl keeps",
                         "source": "tech"}).encode()
    lines = good[:5] + bad[:4] + good[5:11] + [across] + bad[4:] + good[11:]
    (root / "b-bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (root / "c-corrupt.parquet").write_bytes(b"this is not a parquet file at all\n")
    return root


def _env(home: Path, corpus: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEM_")}
    env.update(GEM_HOME=str(home), GEM_CORPUS=str(corpus / "*"), GEM_PROFILE="smoke", GEM_K="3",
               GEM_SOURCE_COLUMN="source", GEM_MLFLOW="0", GEM_EXECUTOR="in_process", GEM_PROXY="ngram",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def _make_run(home: Path, corpus: Path, *args: str, kill_at: str | None = None, timeout: float = 400) -> tuple[int, str]:
    """``python -m gem_assets.run`` (what ``make run`` runs) in its own process group; with
    ``kill_at``, SIGKILLed as soon as a line of its output starts with it. Returns (exit status, output)."""
    proc = subprocess.Popen([sys.executable, "-m", "gem_assets.run", "--defs-file", str(DEFS_FILE), *args],
                            env=_env(home, corpus), cwd=HERE.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    lines = []
    deadline = time.monotonic() + timeout
    try:
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace")
            lines.append(line)
            if kill_at is not None and line.startswith(kill_at):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            if time.monotonic() > deadline:
                raise TimeoutError("".join(lines[-50:]))
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    if kill_at is not None:
        assert rc == -signal.SIGKILL, f"the run ended before {kill_at!r}:\n" + "".join(lines[-40:])
    return rc, "".join(lines)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted ``make run`` on the bad-input corpus: (corpus, home, exit status, output)."""
    root = tmp_path_factory.mktemp("bad-input")
    corpus = _bad_input_corpus(root / "corpus")
    home = root / "home"
    t0 = time.perf_counter()
    rc, out = _make_run(home, corpus)
    print(f"uninterrupted make run: {time.perf_counter() - t0:.1f} s")
    return corpus, home, rc, out


def _summary(out: str) -> list[str]:
    return out.split("== gem-assets summary ==", 1)[1].splitlines()


def test_bad_input_corpus_through_make_run(reference):
    corpus, home, rc, out = reference
    assert "== gem-assets summary ==" in out, out[-5000:]
    assert rc == 1  # a run failed: the corrupt file's
    layout = Layout(home.resolve())
    summary = _summary(out)

    # every good record of every readable shard is kept, every bad one quarantined with its reason
    docs = {k: json.loads(layout.documents_meta_path(k).read_text()) for k in ("a-good.jsonl", "b-bad.jsonl")}
    assert (docs["a-good.jsonl"]["rows_in"], docs["a-good.jsonl"]["kept"], docs["a-good.jsonl"]["quarantined"]) == (24, 24, 0)
    assert (docs["b-bad.jsonl"]["rows_in"], docs["b-bad.jsonl"]["kept"], docs["b-bad.jsonl"]["quarantined"]) == (26, 17, 9)
    assert {r: n for r, n in docs["b-bad.jsonl"]["reasons"].items() if n} == {
        "null_text": 1, "empty_text": 2, "missing_text": 1, "too_long": 1, "duplicate_id": 1, "invalid_utf8": 1,
        "invalid_json": 1, "text_not_string": 1}
    q = pl.read_parquet(layout.quarantine_path("b-bad.jsonl"))
    assert q.select("row", "line", "id", "reason").rows() == QUARANTINED
    by_reason = {r["reason"]: r for r in q.iter_rows(named=True)}
    limit = max_record_bytes(PROFILES["smoke"].max_chars)  # the 2 MB line is not read whole
    assert by_reason["too_long"]["detail"] == f"record of {len(HUGE) + 1} bytes > {limit} bytes read per record"
    assert by_reason["too_long"]["raw"] == HUGE[:1024]
    assert by_reason["invalid_json"]["raw"] == b'{"id": "bad-truncated", "text": "this line was cut in the mid'
    assert by_reason["invalid_utf8"]["raw"].startswith(b'{"id": "bad-utf8"')
    assert by_reason["text_not_string"]["detail"] == "'text' is a JSON number, not a string"
    assert by_reason["duplicate_id"]["detail"] == "id first seen at row 3"
    kept = pl.read_parquet(layout.documents_path("b-bad.jsonl"))
    assert kept.height == 17 and not set(kept["id"]) & {r[2] for r in QUARANTINED if r[2] not in (None, "b0003")}
    assert kept.filter(pl.col("id") == "b0003")["row"].to_list() == [3]  # the first occurrence

    # the duplicate across shards: a-good.jsonl (its key sorts first) keeps the id, b-bad.jsonl's copy is left out
    across = pl.read_parquet(home / "outputs" / "quarantine" / "across-shards" / "duplicate_ids.parquet")
    assert across.select("shard", "row", "id", "reason", "first_shard", "first_row").rows() == [
        ("b-bad.jsonl", 15, "a0007", "duplicate_id_across_shards", "a-good.jsonl", 7)]
    assign = {k: pl.read_parquet(layout.assignments_path(k)) for k in ("a-good.jsonl", "b-bad.jsonl")}
    assert assign["a-good.jsonl"].height == 24 and assign["b-bad.jsonl"].height == 16
    assert "a0007" not in assign["b-bad.jsonl"]["id"].to_list()

    # the unreadable file fails its partition alone, named once; every later stage runs on the rest and names it
    assert (layout.work_dir / "documents" / "c-corrupt.parquet.failed.json").is_file()
    failed = [line for line in summary if line.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith("FAILED      c-corrupt.parquet: corrupt shard ")
    assert "cannot read it as Parquet" in failed[0]
    assert failed[0].endswith("; left out of teacher, student, stats, taxonomy, mixing, evaluation "
                              "(GEM_ON_BAD_SHARD=skip)")
    assert out.count("FAILED c-corrupt.parquet:") == 1  # the progress line
    assert "lacks documents" not in out and "run the pipeline up to" not in out
    assert "shards      3: 2 embedded now, 0 up to date, 1 failed" in summary
    assert ("documents   50 in = 41 kept + 9 quarantined (duplicate_id 1, empty_text 2, invalid_json 1, invalid_utf8 1, "
            "missing_text 1, null_text 1, text_not_string 1, too_long 1)") in summary
    assert any(line.startswith("duplicates  1 kept document(s) whose id a shard with an earlier key kept")
               and "(b-bad.jsonl 1)" in line for line in summary)
    for stage in ("teacher     refit", "student     trained", "taxonomy    computed", "mixing      computed",
                  "evaluation  computed"):
        assert any(line.startswith(stage) for line in summary), stage
    stats = json.loads((home / "outputs" / "domain_stats" / "summary.json").read_text())
    assert stats["shards"] == ["a-good.jsonl", "b-bad.jsonl"] and stats["documents"] == stats["kept_documents"] == 40
    evaluation = json.loads((home / "outputs" / "evaluation" / "summary.json").read_text())
    assert list(evaluation["excluded"]) == ["c-corrupt.parquet"]
    assert evaluation["excluded"]["c-corrupt.parquet"].startswith("failed: corrupt shard ")
    tax = json.loads((home / "outputs" / "taxonomy.json").read_text())
    assert list(tax["excluded_shards"]) == ["c-corrupt.parquet"] and tax["shards"] == ["a-good.jsonl", "b-bad.jsonl"]


def _outputs(home: Path) -> dict:
    """What a resumed run must reproduce: documents, quarantine, assignments, shares, taxonomy names, weights."""
    out, o = {}, home / "outputs"
    for k in ("a-good.jsonl", "b-bad.jsonl"):
        out[f"documents/{k}"] = pl.read_parquet(home / "work" / "documents" / f"{k}.parquet").rows()
        out[f"quarantine/{k}"] = pl.read_parquet(o / "quarantine" / f"{k}.parquet").rows()
        out[f"assignments/{k}"] = pl.read_parquet(o / "assignments" / f"{k}.parquet").sort("id").rows()
    teacher = json.loads((o / "teacher" / "summary.json").read_text())
    out["teacher shares"] = (teacher["hard_shares"], teacher["final_objective"])
    out["domain_stats"] = pl.read_csv(o / "domain_stats" / "domain_stats.csv").rows()
    out["taxonomy names"] = [d["name"] for d in json.loads((o / "taxonomy.json").read_text())["domains"]]
    for name in ("regmix", "doremi"):
        out[f"{name} weights"] = json.loads((o / "weights" / f"{name}.json").read_text())["weights"]
    out["mixture weights"] = json.loads((o / "mixture" / "manifest.json").read_text())["weights"]
    return out


def _processes_of(dagster_home: Path) -> list[int]:
    """Live processes whose environment holds DAGSTER_HOME=dagster_home (webservers, code servers)."""
    needle = f"DAGSTER_HOME={dagster_home}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    found.append(int(d.name))
            except OSError:
                pass
    return found


@pytest.mark.slow  # three make run subprocesses, two of them SIGKILLed: make test-slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find left-over processes")
def test_make_run_killed_twice_resumes_to_the_same_outputs(reference, tmp_path):
    corpus, ref_home, _, _ = reference
    home = tmp_path / "home"
    t0 = time.perf_counter()
    # SIGKILL while the shards are validated, then (the resumed run) while the student trains; a third
    # point (the mixing proxies) was as good but cost about 20 s more: each run starts a webserver
    for point in ("[2/3] shard b-bad.jsonl:", "student:"):
        _make_run(home, corpus, "--until", "mixing", kill_at=point)
    rc, out = _make_run(home, corpus, "--until", "mixing")
    seconds = time.perf_counter() - t0
    assert "== gem-assets summary ==" in out and rc == 1, out[-3000:]  # 1: the corrupt file, as before
    assert "mixing      computed" in out or "mixing      up to date" in out
    resumed, uninterrupted = _outputs(home), _outputs(ref_home)
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:
        assert resumed[name] == uninterrupted[name], name
    # no webserver (or code server) of a killed run outlives it
    deadline = time.monotonic() + 30
    while _processes_of(home.resolve() / "dagster") and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _processes_of(home.resolve() / "dagster")
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left
    print(f"two killed make runs and the resumed one: {seconds:.1f} s")


def test_cross_shard_duplicates_keep_the_id_in_the_shard_whose_key_sorts_first():
    shards = {"b": pl.DataFrame({"row": [0, 2, 5], "id": ["x", "y", "z"]}),
              "a": pl.DataFrame({"row": [1, 3], "id": ["y", "w"]}),
              "c": pl.DataFrame({"row": [0, 1, 4], "id": ["z", "y", "v"]})}
    dups = cross_shard_duplicates(list(shards), lambda k: shards[k])
    assert dups.select("shard", "row", "id", "first_shard", "first_row").rows() == [
        ("b", 2, "y", "a", 1), ("c", 0, "z", "b", 5), ("c", 1, "y", "a", 1)]
    assert set(dups["reason"]) == {"duplicate_id_across_shards"}
    assert dups["detail"][0] == "id kept by shard a (row 1), whose key sorts first"
    assert cross_shard_duplicates(["a", "b"], lambda k: {"a": shards["a"], "b": shards["c"]}[k]).height == 1
    assert cross_shard_duplicates([], lambda k: None).height == 0


def test_on_bad_shard_skip_proceeds_and_fail_stops(tiny_corpus, gem_home, instance):
    """GEM_ON_BAD_SHARD at the first aggregate: skip names the failed shard and samples the others;
    fail stops, naming it, and is not retried; a fixed file clears the failure."""
    (tiny_corpus / "zz.parquet").write_bytes(b"not parquet")
    keys = ["a.jsonl", "b.jsonl", "c.parquet", "zz.parquet"]
    instance.add_dynamic_partitions(SHARDS, keys)
    res = make_resources(gem_home, str(tiny_corpus / "*"))
    for key in ("a.jsonl", "zz.parquet"):
        materialize([documents, embeddings], partition_key=key, instance=instance, resources=res,
                    raise_on_error=False)
    layout = Layout(gem_home.resolve())
    assert bad_shards.failed_shards(res["gem"]) == {
        "zz.parquet": f"failed: corrupt shard {tiny_corpus.resolve() / 'zz.parquet'}: cannot read it as Parquet "
        "(Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file.)"}

    failing = make_resources(gem_home, str(tiny_corpus / "*"), on_bad_shard="fail")
    result = materialize([teacher_sample], instance=instance, resources=failing, raise_on_error=False)
    assert not result.success
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    desc = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0] \
        .step_failure_data.user_failure_data.description
    assert desc.startswith("GEM_ON_BAD_SHARD=fail: teacher_sample does not run while 1 shard(s) cannot be read: "
                           "zz.parquet (corrupt shard ")
    assert desc.endswith("Fix or remove the file(s), or set GEM_ON_BAD_SHARD=skip to proceed on the other shards")

    result = materialize([teacher_sample], instance=instance, resources=res)
    md = {k: v.value for k, v in result.asset_materializations_for_node("teacher_sample")[-1].metadata.items()}
    assert md["per_shard"] == {"a.jsonl": 40}
    assert md["excluded_shards"]["zz.parquet"].startswith("failed: corrupt shard ")
    assert md["excluded_shards"]["b.jsonl"] == "not embedded yet"

    # advice only when it can help
    assert "materialize" in bad_shards.nothing_usable("s", "none", {"a": "not embedded yet"}, "materialize X").description
    only_failed = bad_shards.nothing_usable("s", "none", {"zz.parquet": "failed: corrupt"}, "materialize X").description
    assert "materialize" not in only_failed and "every shard failed: fix the files" in only_failed

    # the file fixed: its documents materialize and the failure record is gone
    pl.DataFrame(make_docs(3, prefix="z")).write_parquet(tiny_corpus / "zz.parquet")
    assert materialize([documents], partition_key="zz.parquet", instance=instance, resources=res).success
    assert not layout.documents_failed_path("zz.parquet").is_file() and bad_shards.failed_shards(res["gem"]) == {}
