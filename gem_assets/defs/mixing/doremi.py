"""``doremi_weights``: DoReMi on the proxy corpus's train streams -> ``outputs/weights/doremi.json``."""

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from gem_assets.defs._format import markdown_table
from gem_assets.defs.mixing.common import (DOREMI_KEYS, full_weights, mlflow_params, proxy_record, read_proxy,
                                           require_stats, run_tags, mixing_tracker, write_weights_outputs,
                                           weights_summary, weights_table, mixing_fingerprints)
from gem_assets.defs.mixing.proxy import proxy_corpus
from gem_assets.defs.versions import STORE_RETRY, code_version, data_version
from gem_assets.resources.config import GemConfig
from gem_assets.resources.mlflow import MlflowTracker

__all__ = ["doremi_weights"]


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
    stats = require_stats(settings)
    fps = mixing_fingerprints(settings, stats["fingerprint"])
    meta, train, valid, _ = read_proxy(settings, fps["proxy_corpus"])
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
    weights = full_weights(meta, res.weights)
    summary = weights_summary(weights)
    excess_mean = (dict(zip(res.domains, res.excess.mean(0).tolist())) if res.excess is not None else {})
    fp = fps["doremi_weights"]
    if kind == "ngram":
        budget = p["proxy_tokens"]
    else:
        from gem_assets.lib.mixing.lm import LMConfig

        budget = p["doremi_steps"] * p["batch_size"] * LMConfig(**p["proxy_config"]).context
    record = {"method": "doremi", "fingerprint": fp, "weights": weights, "natural_shares": meta["natural_shares"],
              "proxy": proxy_record(p, budget),
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
    png = write_weights_outputs(settings, "doremi", meta, weights, record, "DoReMi weights vs natural shares")
    traj_png = plots.weight_trajectory(res.trajectory, res.domains, title=f"DoReMi weights per {unit}")
    # per round (n-gram): weights and excess losses; per step (transformer): the weights, as before
    history = [{"iteration": t + 1, **{f"weight/{n}": float(w) for n, w in zip(res.domains, row)},
                **({f"excess/{n}": float(x) for n, x in zip(res.domains, res.excess[t])} if kind == "ngram" else {})}
               for t, row in enumerate(res.trajectory)]
    outcome = mixing_tracker(mlflow).log_fit(
        settings.layout, run_name=f"doremi-{context.run.run_id[:8]}",
        params={**mlflow_params(p, DOREMI_KEYS[kind]), "variant": record["variant"], "fingerprint": fp},
        tags=run_tags(context, "doremi_weights", settings), history=history,
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
    table = weights_table(weights, meta["natural_shares"])
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
