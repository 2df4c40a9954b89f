"""The evaluation's tables, picture and report (Markdown and PNG)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import polars as pl

from gem_assets.lib.evaluation.statistics import ALL, MEAN_OF_SOURCES

if TYPE_CHECKING:
    from gem_assets.lib.evaluation.experiment import CorpusEvaluation, EvaluationConfig

__all__ = ["results_markdown", "differences_markdown", "bpb_chart", "report_markdown"]


def results_markdown(table: pl.DataFrame, *, confidence: float = 0.95, digits: int = 4) -> str:
    """The summary table as Markdown, one block of rows per target; the best of each (target, mixer) in bold."""
    need = {"target", "bucketization", "mixer", "bpb_target", "bpb_target_low", "bpb_target_high",
            "bpb_target_half_width"}
    if need - set(table.columns):
        raise ValueError(f"the table lacks the column(s) {sorted(need - set(table.columns))}")
    best = {k: float(g["bpb_target"].min()) for k, g in table.group_by("target", "mixer")}
    pct = f"{confidence:.0%}"
    head = ["target", "bucketization", "mixer", "domains", "seeds", f"bpb (mean ± {pct} half-width)", f"{pct} interval"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    f = f"{{:.{digits}f}}"
    for r in table.iter_rows(named=True):
        mean = f.format(r["bpb_target"])
        if r["bpb_target"] == best[(r["target"], r["mixer"])]:
            mean = f"**{mean}**"
        lines.append("| " + " | ".join([r["target"], r["bucketization"], r["mixer"], str(r["domains"]), str(r["seeds"]),
                                        f"{mean} ± {f.format(r['bpb_target_half_width'])}",
                                        f"[{f.format(r['bpb_target_low'])}, {f.format(r['bpb_target_high'])}]"]) + " |")
    return "\n".join(lines)


def differences_markdown(differences: pl.DataFrame, *, reference: str = "gem", confidence: float = 0.95) -> str:
    """The paired differences as Markdown: one row per (target, mixer, other bucketization)."""
    pct = f"{confidence:.0%}"
    lines = [f"| target | mixer | versus | seeds | {reference} − other (bpb) | {pct} interval | half-width | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in differences.iter_rows(named=True):
        verdict = (f"{reference} better" if r["high"] < 0 else f"{r['versus']} better" if r["low"] > 0
                   else "no difference resolved")
        lines.append(f"| {r['target']} | {r['mixer']} | {r['versus']} | {r['seeds']} | {r['difference']:+.4f} | "
                     f"[{r['low']:+.4f}, {r['high']:+.4f}] | {r['half_width']:.4f} | {verdict} |")
    return "\n".join(lines)


def bpb_chart(table: pl.DataFrame, *, confidence: float = 0.95, targets: Sequence[str] | None = None,
              title: str | None = None) -> bytes:
    """Bits per byte (mean and interval) by mixer, one marker colour per bucketization, a panel per target.

    Returns
    -------
    bytes
        PNG image.
    """
    from gem_assets.lib.util.plots import _figure, _png

    have = table["target"].unique(maintain_order=True).to_list()
    targets = [t for t in (targets or [t for t in (ALL, MEAN_OF_SOURCES) if t in have] or have[:1]) if t in have]
    if not targets:
        raise ValueError(f"none of the targets {targets} is in the table ({have})")
    mixers = table["mixer"].unique(maintain_order=True).to_list()
    names = table["bucketization"].unique(maintain_order=True).to_list()
    fig = _figure(max(4.5, 1.3 * len(mixers) + 1.5) * len(targets), 3.2)
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
    width = 0.7 / max(1, len(names))
    for i, target in enumerate(targets):
        ax = fig.add_subplot(1, len(targets), i + 1)
        for j, name in enumerate(names):
            part = table.filter((pl.col("bucketization") == name) & (pl.col("target") == target))
            x = [mixers.index(m) + (j - (len(names) - 1) / 2) * width for m in part["mixer"].to_list()]
            y = part["bpb_target"].to_numpy()
            err = [y - part["bpb_target_low"].to_numpy(), part["bpb_target_high"].to_numpy() - y]
            ax.errorbar(x, y, yerr=err, fmt="o", ms=5, capsize=3, color=colors[j % len(colors)], label=name)
        ax.set_xticks(range(len(mixers)))
        ax.set_xticklabels(mixers)
        ax.set_xlabel("mixer")
        ax.set_ylabel("bits per byte (lower is better)")
        ax.set_title(f"target: {target}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, title="bucketization", title_fontsize=7)
    fig.suptitle(title or f"held-out bits per byte, mean and {confidence:.0%} t-interval over seeds", fontsize=9)
    return _png(fig)


def report_markdown(ev: CorpusEvaluation, config: EvaluationConfig, *, title: str = "Mixture evaluation") -> str:
    """``results.md``: the paired differences against GEM (the answer), the table, and what was run."""
    res, c = ev.result, ev.counts
    pct = f"{config.confidence:.0%}"
    tokens = int(res.runs["tokens"].max())
    mix = config.mixing
    lines = [f"# {title}", ""]
    if ev.differences.height:
        worst = float(ev.differences.filter(pl.col("versus") == "kmeans")["half_width"].max() or float("nan"))
        lines += [f"GEM minus each other bucketization, same mixer and target, paired by seed (negative: GEM better), "
                  f"{pct} Student-t interval over {len(config.seeds)} seeds. Largest half-width of GEM − k-means: "
                  f"{worst:.4f} bits per byte.", "", differences_markdown(ev.differences, confidence=config.confidence),
                  ""]
    lines += [f"Held-out bits per byte (lower is better) of target models trained on each mixture; mean and {pct} "
              f"Student-t interval over {len(config.seeds)} seeds (each seed redraws the documents of every mixture). "
              "Bold: the best bucketization of each target and mixer. Targets: `all` = held-out documents of the "
              "whole corpus; a source name = that source's held-out documents, RegMix choosing on that source's "
              f"selection documents (the `source` bucketization is then an oracle); `{MEAN_OF_SOURCES}` = their mean.",
              "", results_markdown(ev.table, confidence=config.confidence), ""]
    lines += ["Setup:", "",
              f"- documents: {c['documents']} = {c['target']} held-out target + {c['select']} weight-selection + "
              f"{c['fit']} training + {c['unusable']} without an embedding or GEM domain (not used)"
              + (f" + {c['capped']} left out by the memory caps (target set / training pool)" if c.get("capped") else ""),
              "- target streams (bytes): " + ", ".join(f"{k} {v}" for k, v in res.target_bytes.items()),
              f"- target models: {config.backend}" + (f" order {config.order}" if config.backend == "ngram" else
                                                       f" {config.transformer.get('config')}")
              + f", {config.budget_tokens} training bytes each ({tokens} realized at most; whole documents, at most "
              f"{config.max_epochs:g} passes over a domain), seeds {list(config.seeds)}",
              f"- mixers' proxies: {mix.proxy}" + (f" order {mix.order}, {mix.proxy_tokens} bytes each" if mix.proxy == "ngram"
                                                    else "") + f"; DoReMi {mix.doremi_rounds} rounds; RegMix "
              f"{mix.regmix_runs} runs, proposal capped at {mix.max_epochs:g} epochs of the target models' budget",
              f"- wall time: weights {res.seconds.get('weights', 0.0):.1f} s, target models "
              f"{res.seconds.get('target_models', 0.0):.1f} s"]
    return "\n".join(lines) + "\n"
