"""Proxy language-model throughput (training bytes per second) on this machine.

    python benchmarks/proxy.py [--steps 30] [--write docs/benchmarks.md]

Trains each profile's proxy shape (``mix_proxy_config`` of the smoke, default and full profiles)
for a few steps on random bytes with ``lib.lm.train_lm`` and reports the training throughput
(predicted bytes per second, after one warm-up run) with 1 and 2 torch threads on CPU, and on
CUDA when present. Also times the bits-per-byte evaluation of the default proxy.
"""

from __future__ import annotations

import argparse
import os
import platform
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
    load = os.getloadavg()[0]
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
    header = (f"Command: `python benchmarks/proxy.py --write docs/benchmarks.md` on {platform.machine()}, "
              f"{os.cpu_count()} cores, torch {torch.__version__}; 1-minute load average {load:.1f} at the start "
              f"(the machine was shared with other work, so these are lower bounds). Date: "
              f"{time.strftime('%Y-%m-%d')}. Random bytes; {args.steps} timed steps after a warm-up.")
    notes = (f"- Evaluation (default proxy, 1 thread, 65,536 bytes): {eval_rate:,.0f} bytes/s.\n"
             "- `train_lm` defaults to 1 torch thread on CPU (`cpu_threads=1`): the proxies' GEMMs are small, and "
             "on this shared machine a second thread waits on the core another process holds.")
    text = "\n\n".join([header, "\n".join(lines), notes])
    print(text)
    if args.write:
        from gem_scaling import write_section  # benchmarks/ is on sys.path when run as a script

        write_section(args.write, "proxy", "Proxy language models (`benchmarks/proxy.py`)", text)


if __name__ == "__main__":
    main()
