"""``regmix_runs`` (proxy runs: mixtures and target losses) and ``regmix_weights`` (the regressor and
the proposed mixture -> ``outputs/weights/regmix.json``)."""

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

from gem_assets.defs._format import markdown_table
from gem_assets.defs.mixing.common import (REGMIX_KEYS, full_weights, mlflow_params, proxy_record, read_proxy,
                                           require_stats, run_tags, mixing_tracker, write_weights_outputs,
                                           weights_summary, weights_table, mixing_fingerprints)
from gem_assets.defs.mixing.proxy import proxy_corpus
from gem_assets.defs.versions import STORE_RETRY, code_version, data_version
from gem_assets.resources.config import GemConfig
from gem_assets.resources.mlflow import MlflowTracker

__all__ = ["regmix_runs", "regmix_weights"]


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
    stats = require_stats(settings)
    fps = mixing_fingerprints(settings, stats["fingerprint"])
    meta, train, _, target = read_proxy(settings, fps["proxy_corpus"])
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
    proxy = {**proxy_record(p, runs["budget_tokens"]),
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

    parent = mixing_tracker(mlflow).log_fit(
        settings.layout, run_name=f"regmix-runs-{context.run.run_id[:8]}",
        params={**mlflow_params(p, REGMIX_KEYS[kind] + ("max_target_documents",)), "fingerprint": fp},
        tags=run_tags(context, "regmix_runs", settings),
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

    from gem_assets.lib.util import plots
    from gem_assets.lib.io import storage
    from gem_assets.lib.mixing.regmix import fit_and_propose

    settings = gem.settings()
    p = settings.mixture_params()
    stats = require_stats(settings)
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
    weights = full_weights(proxy_meta, dict(zip(domains, w.tolist())))
    proposal = weights_summary(weights)
    median = float(np.median(y))
    proxy = {**run_meta["proxy"], "median_target_bpb": median}
    fp = fps["regmix_weights"]
    record = {"method": "regmix", "fingerprint": fp, "weights": weights, "natural_shares": proxy_meta["natural_shares"],
              "fit": fit, "runs": int(y.size), "proxy": proxy, "proposal": proposal,
              "budget_tokens": run_meta["budget_tokens"], "proposal_budget_tokens": budget, "params": p,
              "regmix_runs_fingerprint": fps["regmix_runs"]}
    png = write_weights_outputs(settings, "regmix", proxy_meta, weights, record, "RegMix weights vs natural shares")
    outcome = mixing_tracker(mlflow).log_fit(
        settings.layout, run_name=f"regmix-fit-{context.run.run_id[:8]}",
        params={"kind": fit["kind"], "runs": fit["runs"], "top_k": p["top_k"], "n_simulations": p["n_simulations"],
                "max_epochs": p["max_epochs"], "proxy_kind": proxy["kind"], "top_domain": proposal["top_domain"],
                "fingerprint": fp},
        tags=run_tags(context, "regmix_weights", settings), history=[], metric_keys=(),
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
    table = weights_table(weights, proxy_meta["natural_shares"])
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
