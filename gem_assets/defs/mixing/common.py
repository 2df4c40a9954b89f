"""What the mixing assets share: their parameters, fingerprints, the corpus index, weights outputs."""

from dagster import AssetExecutionContext, Failure

from gem_assets.config import Settings, fingerprint
from gem_assets.resources.mlflow import MlflowTracker

__all__ = ["MIXING_EXPERIMENT", "PROXY_KEYS", "DOREMI_KEYS", "REGMIX_KEYS", "TARGET_PURPOSE", "mixing_fingerprints",
           "stats_summary", "require_stats", "load_index", "n_domains", "read_proxy", "full_weights", "mixing_tracker",
           "run_tags", "write_weights_outputs", "weights_table", "weights_summary", "mlflow_params", "proxy_record"]

#: MLflow experiment of the mixing runs.
MIXING_EXPERIMENT = "gem-mixing"


def stats_summary(settings: Settings) -> dict | None:
    from gem_assets.lib.io import storage

    path = settings.layout.domain_stats_dir / "summary.json"
    return storage.read_json(path) if path.is_file() else None


#: Parameters of a proxy model of each kind (``GEM_PROXY``): part of the weights' fingerprints.
PROXY_KEYS = {"ngram": ("proxy", "ngram_order", "proxy_tokens", "ngram_max_grams", "seed"),
               "transformer": ("proxy", "proxy_config", "batch_size", "lr", "eval_tokens", "seed")}
#: DoReMi's and RegMix's own parameters for each proxy kind.
DOREMI_KEYS = {"ngram": ("doremi_rounds", "doremi_smoothing"),
                "transformer": ("doremi_steps", "doremi_step_size", "doremi_smoothing")}
REGMIX_KEYS = {"ngram": ("regmix_runs", "max_epochs"), "transformer": ("regmix_runs", "regmix_steps", "max_epochs")}


def mixing_fingerprints(settings: Settings, stats_fp: str) -> dict[str, str]:
    """Expected input fingerprints of the five mixing assets, from ``domain_stats``' fingerprint.

    The weights' fingerprints hold the resolved proxy kind and that kind's parameters only:
    switching ``GEM_PROXY`` recomputes DoReMi and RegMix, and so does changing a parameter of
    the kind in use (e.g. ``mix_proxy_tokens`` for ``ngram``), not one of the other kind.
    """
    p = settings.mixture_params()
    kind = p["proxy"]
    proxy = {k: p[k] for k in PROXY_KEYS[kind]}
    fps = {"proxy_corpus": fingerprint("proxy_corpus", stats_fp, {k: p[k] for k in (
        "valid_fraction", "max_bytes_per_domain", "target", "source_column", "seed")})}
    fps["doremi_weights"] = fingerprint("doremi_weights", fps["proxy_corpus"], proxy,
                                        {k: p[k] for k in DOREMI_KEYS[kind]})
    fps["regmix_runs"] = fingerprint("regmix_runs", fps["proxy_corpus"], proxy, {k: p[k] for k in REGMIX_KEYS[kind]})
    fps["regmix_weights"] = fingerprint("regmix_weights", fps["regmix_runs"], {k: p[k] for k in (
        "top_k", "n_simulations", "max_epochs", "mixture_tokens", "seed")})
    fps["curated_mixture"] = fingerprint("curated_mixture", stats_fp, fps[f"{p['mixer']}_weights"], {k: p[k] for k in (
        "mixer", "mixture_tokens", "max_epochs", "rows_per_shard", "seed")})
    return fps


def require_stats(settings: Settings) -> dict:
    stats = stats_summary(settings)
    if stats is None:
        raise Failure(description="no domain stats: materialize 'domain_stats' first", allow_retries=False)
    return stats


#: Purpose of the proxy target sample's key priorities (``lib.mixing.sampling.key_priority``).
TARGET_PURPOSE = "mixing/proxy_target"


def load_index(settings: Settings, shards, target_source: str | None = None, key_seed: int | None = None):
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
                                 key_seed=key_seed, key_purpose=TARGET_PURPOSE)
    if not len(index) and not shards:
        raise Failure(description="domain_stats counted no shard", allow_retries=False)

    def reader(column):
        def read_rows(key, rows):
            return [v for df in iter_selected_rows(layout.documents_path(key), rows, columns=[column])
                    for v in df[column].cast(pl.String)]  # ids as the index reads them (strings)

        return lambda positions: read_index_texts(index, positions, read_rows)

    return index, reader("text"), reader("id")


def n_domains(settings: Settings) -> int:
    from gem_assets.lib.io import storage

    return storage.read_csv(settings.layout.domain_stats_dir / "domain_stats.csv").height


def read_proxy(settings: Settings, expected_fp: str) -> tuple[dict, dict, dict, dict]:
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


def full_weights(meta: dict, weights: dict) -> dict[str, float]:
    """Weights over every domain name (0 for domains without training data)."""
    return {n: float(weights.get(n, 0.0)) for n in meta["domains"]}


def mixing_tracker(mlflow: MlflowTracker) -> MlflowTracker:
    return MlflowTracker(tracking_uri=mlflow.tracking_uri, experiment=MIXING_EXPERIMENT, enabled=mlflow.enabled,
                         on_error=mlflow.on_error, probe_timeout_s=mlflow.probe_timeout_s)


def run_tags(context: AssetExecutionContext, asset_name: str, settings: Settings) -> dict:
    return {"dagster.run_id": context.run.run_id, "dagster.asset_key": asset_name, "gem.profile": settings.profile}


def write_weights_outputs(settings: Settings, name: str, meta: dict, weights: dict, record: dict, title: str):
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


def weights_table(weights: dict, natural: dict):
    import polars as pl

    return pl.DataFrame({"domain": list(weights), "weight": [round(v, 4) for v in weights.values()],
                         "natural_share": [round(natural[n], 4) for n in weights],
                         "ratio": [round(v / natural[n], 3) if natural[n] > 0 else None for n, v in weights.items()]})


def weights_summary(weights: dict) -> dict:
    """``entropy`` (nats), ``top_weight`` and ``top_domain`` of ``{domain: weight}``."""
    import math

    top = max(weights, key=weights.get)
    entropy = -sum(w * math.log(w) for w in weights.values() if w > 0)
    return {"entropy": float(entropy), "top_weight": float(weights[top]), "top_domain": top}


def mlflow_params(p: dict, keys: tuple) -> dict:
    """MLflow parameters of a weights run: ``proxy_kind``, the proxy kind's parameters, then ``keys``."""
    return {("proxy_kind" if k == "proxy" else k): p[k] for k in PROXY_KEYS[p["proxy"]] + keys}


def proxy_record(p: dict, budget_tokens: int) -> dict:
    """The proxy models' description in the weights files: ``kind`` and its parameters."""
    if p["proxy"] == "ngram":
        return {"kind": "ngram", "order": p["ngram_order"], "budget_tokens": int(budget_tokens),
                "max_grams": p["ngram_max_grams"]}
    from dataclasses import asdict

    from gem_assets.lib.mixing.lm import LMConfig

    return {"kind": "transformer", "config": asdict(LMConfig(**p["proxy_config"])), "batch_size": p["batch_size"],
            "lr": p["lr"], "budget_tokens": int(budget_tokens)}

