"""How much RegMix's own seed moves the evaluation: natural shares vs RegMix, per bucketization.

    GEM_HOME=<a home make run finished> python benchmarks/regmix_seeds.py 0 1 2 3

For each RegMix seed given (the seed of its proxy runs' mixtures and of its proposal), runs the
mixture evaluation of the finished home with the natural and RegMix mixers only, over 20 evaluation
seeds, and prints held-out bits per byte on the target ``all`` per bucketization, and GEM minus
k-means under RegMix on ``all`` and ``mean_of_sources`` with its 95% half-width. The intervals of
one evaluation cover the redrawn documents of the target models for fixed weights; the spread over
RegMix seeds is the part of the comparison they do not cover.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seeds", nargs="+", type=int, help="RegMix seeds")
    parser.add_argument("--eval-seeds", type=int, default=20)
    args = parser.parse_args()

    import polars as pl

    from gem_assets.defs.evaluation import _config
    from gem_assets.lib.evaluation import corpus_sample, experiment, statistics
    from gem_assets.lib.io import artifacts, storage
    from gem_assets.resources.config import GemConfig

    gem = GemConfig.from_env()
    settings = gem.settings()
    layout = settings.layout
    keys = sorted(gem.shards())
    params = settings.evaluation_params()
    sample = corpus_sample.sample_corpus(layout, keys, holdout=params["holdout"], seed=params["seed"],
                               max_target_documents=params["max_target_documents"],
                               max_train_documents=params["max_train_documents"])
    vectors, _, _ = artifacts.read_teacher_sample(layout)
    k = int(storage.read_json(layout.student_outputs_dir / "summary.json")["k"])
    base = _config(settings)
    for seed in args.seeds:
        config = dataclasses.replace(base, seeds=tuple(range(args.eval_seeds)), mixers=("natural", "regmix"),
                                     mixing=dataclasses.replace(base.mixing, seed=seed))
        t0 = time.perf_counter()
        ev = experiment.evaluate_corpus(sample, vectors, k, config, select=params["select"], use_source=True,
                                 kmeans=params["kmeans"], texts=lambda rows: corpus_sample.read_texts(layout, rows))
        table = ev.table.filter(pl.col("target") == statistics.ALL)
        bpb = {(r["bucketization"], r["mixer"]): r["bpb_target"] for r in table.iter_rows(named=True)}
        line = ", ".join(f"{b} natural {bpb[(b, 'natural')]:.4f} regmix {bpb[(b, 'regmix')]:.4f}"
                         for b in ("source", "kmeans", "gem") if (b, "regmix") in bpb)
        print(f"RegMix seed {seed} (target all): {line}")
        d = ev.differences.filter((pl.col("versus") == "kmeans") & (pl.col("mixer") == "regmix")
                                  & pl.col("target").is_in([statistics.ALL, "mean_of_sources"]))
        for r in d.iter_rows(named=True):
            print(f"  GEM - k-means under RegMix on {r['target']}: {r['difference']:+.4f} +- {r['half_width']:.4f}")
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
