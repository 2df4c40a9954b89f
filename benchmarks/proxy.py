"""Proxy language-model throughput (training bytes per second) on this machine.

    python benchmarks/proxy.py [--steps 30] [--write docs/benchmarks.md]

Trains each profile's proxy shape (``mix_proxy_config`` of the smoke, default and full profiles)
for a few steps on random bytes with ``lib/mixing/lm.train_lm`` and reports the training throughput
(predicted bytes per second, after one warm-up run) with 1 and 2 torch threads on CPU, and on
CUDA when present. Also times the bits-per-byte evaluation of the default proxy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gem_assets.config import PROFILES  # noqa: E402
from gem_assets.lib.mixing.lm import LMConfig, evaluate_bpb, train_lm  # noqa: E402


def _rate(streams, cfg: LMConfig, steps: int, batch: int, device: str, threads: int | None) -> float:
    train_lm(streams, None, cfg, 2, batch_size=batch, device=device, cpu_threads=threads)  # warm-up
    return train_lm(streams, None, cfg, steps, batch_size=batch, device=device, cpu_threads=threads).tokens_per_second


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--write", type=Path, default=None, help="replace the proxy section of this Markdown file")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    streams = {f"d{i}": rng.integers(0, 256, 400_000).astype(np.uint8) for i in range(4)}
    from _report import load_average, machine, section, write_section

    load = load_average()
    lines = ["| profile | shape (layers x heads x d_model, context) | parameters | batch | device | threads | "
             "train bytes/s |", "|---|---|---|---|---|---|---|"]
    devices = [("cpu", 1), ("cpu", 2)] + ([("cuda", None)] if torch.cuda.is_available() else [])
    for name in ("smoke", "default", "full"):
        prof = PROFILES[name]
        cfg = LMConfig(**dict(prof.mix_proxy_config))
        for device, threads in devices:
            if name == "full" and device == "cpu" and threads == 2:
                continue  # the full shape is meant for a GPU; one CPU row shows the gap
            steps = max(3, args.steps // (8 if name == "full" and device == "cpu" else 1))
            rate = _rate(streams, cfg, steps, prof.mix_batch_size, device, threads)
            lines.append(f"| {name} | {cfg.n_layer} x {cfg.n_head} x {cfg.d_model}, {cfg.context} | "
                         f"{cfg.n_params():,} | {prof.mix_batch_size} | {device} | {threads or '-'} | {rate:,.0f} |")
            print(lines[-1], flush=True)
    cfg = LMConfig(**dict(PROFILES["default"].mix_proxy_config))
    model = train_lm(streams, None, cfg, 2, batch_size=16, device="cpu").model
    t0 = time.perf_counter()
    evaluate_bpb(model, streams["d0"], max_tokens=65_536, device="cpu")
    eval_rate = 65_536 / (time.perf_counter() - t0)
    rates = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rates[(cells[0], cells[4], cells[5])] = float(cells[6].replace(",", ""))
    two = rates.get(("default", "cpu", "2"), 0.0) / max(rates.get(("default", "cpu", "1"), 0.0), 1e-9)
    notes = (f"Reading: random bytes, {args.steps} timed steps after a warm-up (the `full` shape on CPU: an eighth "
             f"of them).\n\n"
             f"- Evaluation (default proxy, 1 thread, 65,536 bytes): {eval_rate:,.0f} bytes/s.\n"
             f"- In this run 2 threads trained the default shape at {two:.2f}x the 1-thread rate. `train_lm` "
             "defaults to 1 torch thread on CPU (`cpu_threads=1`): the proxies' GEMMs are small, and proxies trained "
             "beside other work would otherwise compete for the same cores. Read every rate with the load average "
             "of the first line (a loaded machine gives lower bounds).")
    text = section("\n".join(lines), notes, on=machine(load=load, extra=f"torch {torch.__version__}"))
    print(text)
    if args.write:
        write_section(args.write, "proxy", text, "Proxy language models (`benchmarks/proxy.py`)")


if __name__ == "__main__":
    main()
