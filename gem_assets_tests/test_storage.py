"""Storage on local paths, ``file://`` URLs and an fsspec object store (the in-memory filesystem):
atomic writes, readers, streamed Parquet, and shards read from a URL."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import numpy as np
import polars as pl
import pytest
from upath import UPath

from conftest import make_docs
from gem_assets.lib.corpus import bbc, shards, validation
from gem_assets.lib.io import storage
from gem_assets.lib.io import streaming


@pytest.fixture
def mem_root():
    """A fresh folder of fsspec's in-memory filesystem, removed afterwards."""
    root = f"memory://gem-test-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root.split("://", 1)[1]):
        fs.rm(root.split("://", 1)[1], recursive=True)


@pytest.fixture
def s3_root(s3_server):
    """A fresh folder in the local S3 server's bucket."""
    return f"{s3_server}/{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["local", "file_url", "memory_url", "memory_upath", "s3_url"])
def root(request, tmp_path, mem_root):
    """One folder per kind of location."""
    if request.param == "s3_url":
        return request.getfixturevalue("s3_root")
    return {
        "local": str(tmp_path / "store"),
        "file_url": f"file://{tmp_path / 'store'}",
        "memory_url": mem_root,
        "memory_upath": UPath(mem_root),
    }[request.param]


def _join(root, *parts):
    return root / "/".join(parts) if isinstance(root, UPath) else f"{root}/{'/'.join(parts)}"


def test_location_kinds(tmp_path):
    assert storage.as_path(str(tmp_path)) == tmp_path
    assert storage.as_path(f"file://{tmp_path}/x.json") == tmp_path / "x.json"
    assert isinstance(storage.as_path(UPath(f"file://{tmp_path}")), Path)
    mem = storage.as_path("memory://bucket/x.json")
    assert isinstance(mem, UPath) and mem.protocol == "memory" and mem.name == "x.json"
    assert storage.is_remote("s3://bucket/key") and storage.is_remote(UPath("memory://a"))
    assert not storage.is_remote("data/x") and not storage.is_remote(f"file://{tmp_path}")
    with pytest.raises(ValueError, match="non-empty path or URL"):
        storage.as_path("  ")


def test_writers_and_readers_round_trip(root):
    df = pl.DataFrame({"id": ["a", "b"], "n": [1, 2]})
    storage.write_json(_join(root, "j", "meta.json"), {"x": np.int64(3), "p": Path("/a")})
    storage.write_parquet(_join(root, "t.parquet"), df)
    storage.write_safetensors(_join(root, "v.safetensors"), {"v": np.eye(3, dtype=np.float32)}, {"k": 1})
    storage.write_text(_join(root, "a.txt"), "héllo")
    assert storage.read_json(_join(root, "j", "meta.json")) == {"x": 3, "p": "/a"}
    assert storage.read_parquet(_join(root, "t.parquet")).equals(df)
    assert storage.read_parquet(_join(root, "t.parquet"), columns=["n"])["n"].to_list() == [1, 2]
    np.testing.assert_array_equal(storage.read_safetensors(_join(root, "v.safetensors"))["v"], np.eye(3))
    assert storage.as_path(_join(root, "a.txt")).read_bytes() == "héllo".encode()


def test_failed_write_keeps_the_previous_version(root):
    dest = _join(root, "keep.json")
    storage.write_json(dest, {"version": 1})
    with pytest.raises(RuntimeError, match="boom"):
        with storage.atomic_path(dest) as tmp:
            tmp.write_text('{"version": 2, "half": ')
            raise RuntimeError("boom")
    assert storage.read_json(dest) == {"version": 1}
    assert sorted(p.name for p in storage.as_path(root).iterdir()) == ["keep.json"]  # no temporary left


def test_atomic_dir_replaces_a_folder_markers_last(root, monkeypatch):
    dest = _join(root, "emb", "shard-1")
    with storage.atomic_dir(dest) as tmp:
        (tmp / "old.bin").write_bytes(b"old")
        (tmp / "meta.json").write_text("{}")
    uploaded: list[str] = []
    if storage.is_remote(dest):  # record the upload order on the object store
        fs = storage.as_path(dest).fs
        real_put = fs.put_file
        monkeypatch.setattr(fs, "put_file", lambda lp, rp, **kw: (uploaded.append(rp.rsplit("/", 1)[-1]),
                                                                   real_put(lp, rp, **kw)))
    with storage.atomic_dir(dest) as tmp:
        (tmp / "meta.json").write_text('{"n": 2}')
        (tmp / "vectors.safetensors").write_bytes(b"v")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "index.parquet").write_bytes(b"i")
    d = storage.as_path(dest)
    names = sorted(p.name for p in d.iterdir())
    assert names == ["meta.json", "sub", "vectors.safetensors"]  # the old file is gone
    assert storage.read_json(d / "meta.json") == {"n": 2}
    assert (d / "sub" / "index.parquet").read_bytes() == b"i"
    if storage.is_remote(dest):
        assert uploaded[-1] == "meta.json" and sorted(uploaded) == ["index.parquet", "meta.json",
                                                                    "vectors.safetensors"]
    if storage.is_remote(dest):  # summary.json (the teacher, student, stats and evaluation folders' marker)
        uploaded.clear()
        with storage.atomic_dir(_join(root, "out")) as tmp:
            for name in ("a.csv", "summary.json", "weights.json", "z.png"):
                (tmp / name).write_text(name)
        assert uploaded[-1] == "summary.json" and len(uploaded) == 4
    with pytest.raises(KeyError):
        with storage.atomic_dir(dest) as tmp:
            (tmp / "meta.json").write_text('{"n": 3}')
            raise KeyError("fail")
    assert storage.read_json(d / "meta.json") == {"n": 2}


def test_parquet_batch_writer(root):
    schema = {"id": pl.String, "n": pl.Int64}
    dest = _join(root, "b.parquet")
    with storage.ParquetBatchWriter(dest, schema) as out:
        out.write(pl.DataFrame({"n": [1, 2], "id": ["a", "b"], "extra": [0, 0]}))  # reordered, extra dropped
        out.write(pl.DataFrame(schema=schema))
        out.write(pl.DataFrame({"id": ["c"], "n": [3]}, schema={"id": pl.String, "n": pl.Int32}))  # cast
    assert out.rows == 3
    got = storage.read_parquet(dest)
    assert got.schema == pl.Schema(schema) and got.rows() == [("a", 1), ("b", 2), ("c", 3)]
    with storage.ParquetBatchWriter(_join(root, "empty.parquet"), schema):
        pass
    assert storage.read_parquet(_join(root, "empty.parquet")).schema == pl.Schema(schema)
    with pytest.raises(ValueError, match="at least one column"):
        storage.ParquetBatchWriter(dest, {})
    with pytest.raises(RuntimeError, match="outside its with-block"):
        storage.ParquetBatchWriter(dest, schema).write(pl.DataFrame({"id": ["x"], "n": [1]}))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_shards_stream_from_an_object_store(mem_root, tmp_path, suffix):
    rows = make_docs(30, seed=4)
    rows[3]["text"] = ""
    frame = pl.DataFrame(rows)
    src = storage.as_path(f"{mem_root}/corpus/s{suffix}")
    if suffix == ".jsonl":
        storage.write_bytes(src, frame.write_ndjson().encode())
    else:
        storage.write_parquet(src, frame)
    local = tmp_path / f"s{suffix}"
    local.write_bytes(src.read_bytes())
    expected = validation.validate_shard(local, source_column="source")
    docs, quar = f"{mem_root}/work/docs.parquet", f"{mem_root}/outputs/q.parquet"
    summary = validation.validate_shard_to(str(src), docs, quar, source_column="source", batch_rows=7)
    assert (summary.rows_in, summary.n_kept, summary.n_quarantined) == (30, 29, 1)
    assert storage.read_parquet(docs).equals(expected.kept)
    assert storage.read_parquet(quar).equals(expected.quarantine)
    assert streaming.parquet_num_rows(docs) == 29
    vecs, index = streaming.embed_selected(lambda t, desc="": np.ones((len(t), 4), np.float32), docs, [0, 5, 28],
                                           batch_rows=4)
    assert vecs.shape == (3, 4) and index["row"].to_list() == [0, 6, 29]  # row 3 was quarantined
    with pytest.raises(shards.ShardError, match="does not exist"):
        validation.validate_shard(f"{mem_root}/corpus/missing.jsonl")


@pytest.mark.parametrize("store", ["memory", "s3"])
def test_shard_assets_write_to_an_object_store_home(store, request, tiny_corpus, instance):
    """GEM_HOME as an fsspec URL (memory://, and s3:// on a local S3 server): documents and
    embeddings materialize into the object store."""
    from dagster import materialize

    from conftest import make_resources
    from gem_assets.definitions import ASSETS
    from gem_assets.defs.partitions import SHARDS
    from gem_assets.lib.io import artifacts

    home = f"{request.getfixturevalue('mem_root' if store == 'memory' else 's3_root')}/home"
    res = make_resources(home, str(tiny_corpus / "*"))
    layout = res["gem"].settings().layout
    assert isinstance(layout.home, UPath) and str(layout.home) == home
    keys = sorted(res["gem"].shards())
    instance.add_dynamic_partitions(SHARDS, keys)
    for key in keys:
        result = materialize(ASSETS[:2], resources=res, instance=instance, partition_key=key)
        assert result.success
        assert all(c.passed for c in result.get_asset_check_evaluations())
    for key in keys:
        docs = artifacts.read_documents(layout, key)
        vectors, index, meta = artifacts.read_embeddings(layout, key)
        assert docs.height == 40 and meta["n_documents"] == 40
        assert index["id"].to_list() == docs["id"].to_list()  # smoke cap 48 > 40: every document, in order
        assert vectors.shape == (40, 32)
        assert storage.read_json(layout.documents_meta_path(key))["rows_in"] == 40
    assert storage.as_path(f"{home}/outputs/quarantine/{keys[0]}.parquet").is_file()
    assert not Path(f"{store}:").exists()  # nothing went to a local folder named after the URL


def _object_store_corpus(mem_root) -> str:
    """Two shards (30 + 20 documents) and a non-shard file in the object store; returns the glob."""
    storage.write_bytes(f"{mem_root}/corpus/2024/a.jsonl", pl.DataFrame(make_docs(30, seed=6)).write_ndjson().encode())
    storage.write_parquet(f"{mem_root}/corpus/b.parquet", pl.DataFrame(make_docs(20, seed=7, prefix="b")))
    storage.write_bytes(f"{mem_root}/corpus/notes.txt", b"not a shard")
    return f"{mem_root}/corpus/**"


def test_corpus_on_an_object_store(mem_root):
    """GEM_CORPUS as an fsspec URL glob: discovery and hashing (with its cache). The whole pipeline on
    such a corpus runs in test_whole_pipeline_on_an_object_store_home."""
    from gem_assets.defs.shards import hash_shards

    found = shards.discover_shards(_object_store_corpus(mem_root))
    assert list(found) == ["2024__a.jsonl", "b.parquet"] and all(isinstance(p, UPath) for p in found.values())
    hashes, cache = hash_shards(found)
    assert hashes["b.parquet"] == shards.file_sha256(found["b.parquet"])
    again, cache2 = hash_shards(found, cache)
    assert again == hashes and cache2 == cache  # unchanged objects: same signature, not re-hashed


def test_gem_model_round_trips_on_every_kind_of_location(root):
    from gem_assets.lib.teacher.gem import GEM
    from gem_assets.lib.teacher.synthetic import make_cone_clusters

    X, _, _ = make_cone_clusters(300, 8, 3, kappa=50.0, dtype=np.float64, random_state=1)
    model = GEM(3, isotropy=True, max_iter=20, random_state=0).fit(X)
    dest = _join(root, "teacher", "model")
    model.save(dest)
    d = storage.as_path(dest)
    assert sorted(p.name for p in d.iterdir()) == ["model.json", "model.safetensors"]
    assert storage.read_json(d / "model.json")["format"] == "gem-assets/GEM/1"
    again = GEM.load(dest)
    np.testing.assert_allclose(again.predict_proba(X), model.predict_proba(X), atol=1e-12)
    np.testing.assert_array_equal(again.center_, model.center_)
    assert again.history_ == model.history_ and again.objective_ == model.objective_
    storage.write_json(d / "model.json", {"format": "something-else"})
    with pytest.raises(ValueError, match="does not hold a GEM model"):
        GEM.load(dest)


def test_state_folder_of_a_url_home(tmp_path):
    """The Dagster instance and the MLflow store stay local: GEM_STATE, else a folder named after the URL."""
    from gem_assets.config import Layout, Settings, default_state_dir

    local = Settings(home=str(tmp_path / "h")).layout
    assert local.state_dir == local.home == (tmp_path / "h").resolve()
    assert local.dagster_home == local.home / "dagster" and local.mlflow_uri == f"sqlite:///{local.home / 'mlflow.db'}"
    moved = Settings(home=str(tmp_path / "h"), state=str(tmp_path / "s")).layout
    assert moved.dagster_home == (tmp_path / "s").resolve() / "dagster" and moved.home == local.home
    remote = Settings(home="s3://bucket/gem", state=str(tmp_path / "s")).layout
    assert isinstance(remote.home, UPath) and remote.state_dir == (tmp_path / "s").resolve()
    assert remote.mlflow_artifacts == (tmp_path / "s").resolve() / "mlartifacts"
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    d = default_state_dir("s3://bucket/gem/", env)
    assert d == (tmp_path / "cache").resolve() / "gem-assets" / "state" / d.name
    assert d.name.startswith("s3-bucket_gem-") and len(d.name) == len("s3-bucket_gem-") + 8
    assert default_state_dir("s3://bucket/other", env) != d  # one instance per home
    assert default_state_dir("s3://bucket/gem", env) == d
    assert Settings(home="memory://x").layout.state_dir.parent.name == "state"
    from gem_assets.resources import GemConfig  # the environment variables, through the Dagster resource

    res = GemConfig.from_env({"GEM_HOME": "s3://bucket/gem", "GEM_STATE": str(tmp_path / "s")})
    assert res.state == str((tmp_path / "s").resolve()) and res.home == "s3://bucket/gem"
    assert res.settings().layout.dagster_home == (tmp_path / "s").resolve() / "dagster"
    assert GemConfig.from_env({"GEM_HOME": str(tmp_path / "h")}).settings().layout.mlflow_artifacts == \
        (tmp_path / "h").resolve() / "mlartifacts"
    with pytest.raises(ValueError, match="GEM_STATE must be a local folder"):
        Settings(home="s3://bucket/gem", state="s3://bucket/state").layout
    with pytest.raises(ValueError, match="set GEM_STATE"):
        Layout(UPath("memory://x")).dagster_home


def test_whole_pipeline_on_an_object_store_home(mem_root, tmp_path, monkeypatch):
    """``run_pipeline`` (``make run``) with ``GEM_HOME`` and ``GEM_CORPUS`` on an object store (fsspec's
    memory://): every output lands in the store, the Dagster instance and the MLflow store (with the
    artifacts logged from the store) in the local ``GEM_STATE``, nothing in a folder named after the
    URL; a re-run recomputes nothing."""
    import io

    from conftest import make_resources
    from gem_assets.definitions import build_definitions
    from gem_assets.defs.shards import hash_shards
    from gem_assets.lib.io import artifacts
    from gem_assets.lib.teacher.gem import GEM
    from gem_assets.lib.student.classifier import StudentClassifier
    from gem_assets.run import CodeLocation, open_instance, run_pipeline

    here = Path(__file__).resolve().parent
    LOCATION = CodeLocation(module_name=None, python_file=str(here / "distributed_defs.py"), working_directory=str(here))

    monkeypatch.chdir(tmp_path)  # a URL mistaken for a local path would create ./memory:/... here
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))  # open_instance sets it; restored afterwards
    glob = _object_store_corpus(mem_root)
    state = tmp_path / "state"
    res = make_resources(f"{mem_root}/home", glob, mlflow=True, state=str(state))
    layout = res["gem"].settings().layout
    assert isinstance(layout.home, UPath) and layout.dagster_home == state.resolve() / "dagster"
    hashes, _ = hash_shards(shards.discover_shards(glob))
    # the webserver make run asks for the stale status loads the test code location from this
    # environment: the same settings as the resources, so both sides compute the same code versions
    for name, value in {"GEM_HOME": f"{mem_root}/home", "GEM_CORPUS": glob, "GEM_PROFILE": "smoke", "GEM_K": "4",
                        "GEM_SOURCE_COLUMN": "source", "GEM_STATE": str(state), "GEM_MLFLOW": "0"}.items():
        monkeypatch.setenv(name, value)
    out = io.StringIO()
    with open_instance(layout.dagster_home) as inst:
        summary = run_pipeline(defs=build_definitions(**res), instance=inst, out=out, location=LOCATION)
        assert summary["failed"] == {}, out.getvalue()
        assert set(summary["shards"].values()) == {"embedded"} and summary["teacher"] == "refit"
        assert summary["student"] == "trained" and sorted(summary["assigned_shards"]) == sorted(hashes)
        assert (summary["stats"], summary["taxonomy"], summary["mixing"], summary["evaluation"]) == \
            ("computed",) * 4, out.getvalue()
        # every output is in the object store, and readable from there
        for key, n in (("2024__a.jsonl", 30), ("b.parquet", 20)):
            assert artifacts.read_documents(layout, key).height == n
            assert artifacts.read_documents_meta(layout, key)["shard_sha256"] == hashes[key]
            labels = storage.read_parquet(layout.assignments_path(key))
            assert labels.height == n and labels["domain"].is_between(0, 3).all()
        vectors, _, _ = artifacts.read_teacher_sample(layout)
        model = GEM.load(layout.teacher_model_dir)
        assert model.means_.shape == (4, 32) and model.predict(vectors).shape == (vectors.shape[0],)
        assert storage.read_json(layout.teacher_outputs_dir / "summary.json")["n_documents"] == vectors.shape[0]
        assert storage.read_parquet(layout.teacher_outputs_dir / "assignments.parquet").height == vectors.shape[0]
        assert StudentClassifier.load(layout.student_outputs_dir / "model").n_classes == 4
        assert storage.read_csv(layout.domain_stats_dir / "domain_stats.csv")["documents"].sum() == 50
        tax = storage.read_json(layout.taxonomy_path)
        assert tax["k"] == 4 and len(tax["domains"]) == 4
        assert storage.as_path(layout.taxonomy_dir / "taxonomy.md").read_bytes().startswith(b"**Tree**")
        manifest = storage.read_json(layout.mixture_dir / "manifest.json")
        parts = [storage.read_parquet(layout.mixture_dir / f) for f in manifest["files"]]
        assert sum(p.height for p in parts) == manifest["documents"] > 0
        for name in ("doremi.json", "regmix.json"):
            assert set(storage.read_json(layout.weights_dir / name)["weights"]) == set(manifest["weights"])
        results = storage.read_csv(layout.evaluation_dir / "results.csv")
        assert results.height > 0 and results["bpb_target"].is_finite().all()
        assert storage.read_json(layout.evaluation_dir / "summary.json")["profile"] == "smoke"
        # local: the instance and the MLflow store (with the fits' artifacts), nothing else
        assert (state / "dagster").is_dir() and (state / "mlflow.db").is_file()
        assert any(p.name == "shares.png" for p in (state / "mlartifacts").rglob("*"))
        assert {p.name for p in tmp_path.iterdir()} <= {"state", "unused"}
        assert not Path("memory:").exists() and not (Path(__file__).parents[1] / "memory:").exists()
        text = out.getvalue()
        assert f"{mem_root}/home/outputs" in text and "FAILED" not in text
        again = run_pipeline(defs=build_definitions(**res), instance=inst, out=io.StringIO(), location=LOCATION)
        assert again["ran_shards"] == [] and again["teacher"] == "up to date" and again["student"] == "up to date"
        assert (again["stats"], again["taxonomy"], again["mixing"], again["evaluation"]) == ("up to date",) * 4


def test_default_corpus_written_once_into_an_object_store(mem_root):
    """GEM_CORPUS unset with a URL GEM_HOME: the BBC shards are written into the store, once."""
    pattern = bbc.ensure_default_corpus(f"{mem_root}/home/corpus", n_shards=2)
    assert pattern == f"{mem_root}/home/corpus/bbcnews/*.parquet"
    found = shards.discover_shards(pattern)
    assert list(found) == ["bbcnews-000.parquet", "bbcnews-001.parquet"]
    manifest = storage.read_json(f"{mem_root}/home/corpus/bbcnews/manifest.json")
    assert sum(s["rows"] for s in manifest["shards"]) == manifest["documents"] == 2225
    assert sum(streaming.parquet_num_rows(p) for p in found.values()) == 2225
    signature = storage.file_signature(found["bbcnews-000.parquet"])
    assert bbc.ensure_default_corpus(f"{mem_root}/home/corpus", n_shards=2) == pattern
    assert storage.file_signature(found["bbcnews-000.parquet"]) == signature  # kept, not rewritten


def test_local_copy_and_read_csv(root):
    storage.write_text(_join(root, "t.csv"), "a,b\n1,x\n2,y\n")
    assert storage.read_csv(_join(root, "t.csv")).rows() == [(1, "x"), (2, "y")]
    assert storage.read_csv(_join(root, "t.csv"), columns=["b"]).columns == ["b"]
    with storage.atomic_dir(_join(root, "model")) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_bytes(b"w")
        (tmp / "meta.json").write_text("{}")
    with storage.local_copy(_join(root, "model")) as local:
        assert isinstance(local, Path) and local.name == "model"
        assert (local / "sub" / "w.bin").read_bytes() == b"w" and (local / "meta.json").is_file()
    with storage.local_copy(_join(root, "t.csv")) as local:
        assert local.read_bytes() == b"a,b\n1,x\n2,y\n"
    if storage.is_remote(root):
        assert not local.exists()  # the temporary copy is removed
    else:
        assert local == storage.as_path(_join(root, "t.csv"))  # a local file is used where it is
    with pytest.raises(FileNotFoundError, match="no file or folder"):
        with storage.local_copy(_join(root, "missing.json")):
            pass


def test_make_ui_finds_the_state_folder_of_a_url_home(tmp_path, monkeypatch, capsys):
    """``python -m gem_assets.run --dagster-home`` (what ``make ui`` runs): the local instance folder
    that ``make run`` records into, created with telemetry off."""
    from gem_assets.config import default_state_dir
    from gem_assets.run import main

    monkeypatch.setenv("GEM_HOME", "s3://bucket/gem")
    monkeypatch.delenv("GEM_STATE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["--dagster-home"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == default_state_dir("s3://bucket/gem") / "dagster"
    assert printed.is_relative_to(tmp_path / "cache") and "enabled: false" in (printed / "dagster.yaml").read_text()
    monkeypatch.setenv("GEM_STATE", str(tmp_path / "state"))
    assert main(["--dagster-home"]) == 0
    assert Path(capsys.readouterr().out.strip()) == (tmp_path / "state").resolve() / "dagster"


def test_memory_home_refused_with_an_out_of_process_executor(mem_root, tiny_corpus, monkeypatch):
    """memory:// is one process's memory: runs launched in other processes would not see it."""
    import io

    from conftest import make_resources
    from gem_assets.definitions import build_definitions
    from gem_assets.run import run_pipeline

    monkeypatch.setenv("GEM_EXECUTOR", "multiprocess")
    defs = build_definitions(**make_resources(f"{mem_root}/home", str(tiny_corpus / "*")))
    with pytest.raises(SystemExit, match="GEM_EXECUTOR=in_process"):
        run_pipeline(defs=defs, instance=None, out=io.StringIO())
    assert not storage.as_path(f"{mem_root}/home").exists()  # refused before anything was written
