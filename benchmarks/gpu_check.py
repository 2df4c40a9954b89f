"""One short script for a machine with a CUDA GPU: every torch path of the library, CPU against CUDA.

It checks that each path runs on the GPU and gives the CPU's answer, and times both:

- GEM on the synthetic cone (N = 200,000, d = 384, K = 64): the resident path and the streamed path
  (chunks of 16,384 rows), objective and label agreement against the CPU fit;
- the student: training on synthetic texts and labelling, agreement of the CUDA and CPU predictions;
- the proxy LM: a few training steps and bits per byte, CPU against CUDA;
- the teacher embedder (all-MiniLM-L6-v2 from its PyPI package): cosine of CUDA and CPU embeddings.

Without CUDA it says so and exits 0 (CI has no GPU; tests that need one skip themselves).

Usage:  python benchmarks/gpu_check.py [--n 200000] [--json out.json] [--write docs/scaling.md]
                                       [--device cpu (dry run)]

``--write FILE`` replaces the section ``gpu_check`` of FILE with the table of every path (CPU and CUDA
figures, their ratio, how far the CUDA answer is from the CPU's) and its reading.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEV = "cuda"  # the device checked against the CPU; --device cpu makes a dry run of the script itself


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def check_gem(n: int) -> list[dict]:
    from gem_assets.lib.teacher.gem import GEM
    from gem_assets.lib.teacher.synthetic import make_cone_clusters

    X, _, _ = make_cone_clusters(n, 384, 24, exponent=1.1, random_state=0)
    GEM(4, random_state=0, max_iter=2, device=DEV).fit(X[:2000])  # CUDA context and cuBLAS start outside the timings
    rows = []
    # resident: the (N, K) work matrices kept whatever their size (1M x 64 float32 x 4 = 1 GiB);
    # streamed: chunks of 16,384 rows
    for label, kw in (("resident", {"memory_budget": 1 << 40}), ("streamed", {"chunk_size": 16384})):
        cpu, t_cpu = timed(lambda: GEM(64, random_state=0, max_iter=30, device="cpu", **kw).fit(X))
        gpu, t_gpu = timed(lambda: GEM(64, random_state=0, max_iter=30, device=DEV, **kw).fit(X))
        rows.append({"path": f"GEM {label}", "n": n, "cpu_s": t_cpu, "cuda_s": t_gpu, "streamed": gpu.streamed_,
                     "cpu_iters": cpu.n_iter_, "cuda_iters": gpu.n_iter_,
                     "cpu_s_per_iter": t_cpu / max(cpu.n_iter_, 1), "cuda_s_per_iter": t_gpu / max(gpu.n_iter_, 1),
                     "objective_rel_diff": abs(gpu.objective_ - cpu.objective_) / abs(cpu.objective_),
                     "label_agreement": float(np.mean(gpu.labels_ == cpu.labels_))})
    return rows


def check_student() -> dict:
    from gem_assets.lib.student.classifier import StudentClassifier

    rng = np.random.default_rng(0)
    vocab = [[f"w{k}_{j}" for j in range(50)] for k in range(4)]
    labels = rng.integers(0, 4, 4000)
    texts = [" ".join(rng.choice(vocab[y], 30)) for y in labels]
    kw = dict(dim=32, buckets=1 << 16, epochs=3, random_state=0)
    cpu, t_cpu = timed(lambda: StudentClassifier(4, device="cpu", **kw).fit(texts, labels))
    gpu, t_gpu = timed(lambda: StudentClassifier(4, device=DEV, **kw).fit(texts, labels))
    return {"path": "student", "cpu_s": t_cpu, "cuda_s": t_gpu,
            "label_agreement": float(np.mean(cpu.predict(texts) == gpu.predict(texts))),
            "cuda_accuracy": float(np.mean(gpu.predict(texts) == labels))}


def check_lm() -> dict:
    from gem_assets.lib.mixing.lm import LMConfig, evaluate_bpb, train_lm

    rng = np.random.default_rng(0)
    streams = {f"d{k}": rng.integers(97 + 5 * k, 102 + 5 * k, 200_000).astype(np.uint8) for k in range(3)}
    cfg = LMConfig(n_layer=2, n_head=2, d_model=64, context=128)
    cpu, t_cpu = timed(lambda: train_lm(streams, None, cfg, steps=50, batch_size=16, seed=0, device="cpu"))
    gpu, t_gpu = timed(lambda: train_lm(streams, None, cfg, steps=50, batch_size=16, seed=0, device=DEV))
    b_cpu = evaluate_bpb(cpu.model, streams["d0"], max_tokens=20_000, device="cpu")
    b_gpu = evaluate_bpb(gpu.model, streams["d0"], max_tokens=20_000, device=DEV)
    return {"path": "proxy LM", "cpu_s": t_cpu, "cuda_s": t_gpu, "cpu_bpb": b_cpu, "cuda_bpb": b_gpu,
            "cpu_tokens_per_s": cpu.tokens_per_second, "cuda_tokens_per_s": gpu.tokens_per_second}


def check_embedder() -> dict:
    from gem_assets.lib.teacher.embed import SentenceEncoder

    rng = np.random.default_rng(0)
    words = "markets football elections parliament season goals shares inflation recipe oven software chip".split()
    texts = [f"Document {i}: " + " ".join(rng.choice(words, 120)) for i in range(4096)]   # ~128 tokens each
    cpu_enc, gpu_enc = SentenceEncoder(device="cpu"), SentenceEncoder(device=DEV)
    cpu_enc.encode(texts[:64], progress=False), gpu_enc.encode(texts[:64], progress=False)  # loads outside the timings
    cpu, t_cpu = timed(lambda: cpu_enc.encode(texts, progress=False))
    gpu, t_gpu = timed(lambda: gpu_enc.encode(texts, progress=False))
    return {"path": "teacher embedder", "docs": len(texts), "cpu_s": t_cpu, "cuda_s": t_gpu,
            "cpu_docs_per_s": len(texts) / t_cpu, "cuda_docs_per_s": len(texts) / t_gpu,
            "min_cosine": float(np.min(np.sum(cpu * gpu, axis=1)))}


def table(rows: list[dict], threads: int, device_name: str) -> str:
    """One row per path: CPU and CUDA figures, their ratio, and how far the CUDA answer is from the CPU's."""
    lines = [f"| path | CPU ({threads} threads) | CUDA ({device_name}) | speed-up on CUDA | CUDA vs CPU answer |",
             "|---|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['path']} | | | | error: {r['error']} |")
        elif r["path"].startswith("GEM"):
            chunk = " (chunks of 16,384)" if "streamed" in r["path"] else ""
            lines.append(f"| {r['path']}{chunk}, s per MM iteration | {r['cpu_s_per_iter']:.3f} | "
                         f"{r['cuda_s_per_iter']:.3f} | {r['cpu_s_per_iter'] / r['cuda_s_per_iter']:.1f}x | J rel. diff "
                         f"{r['objective_rel_diff']:.1e}, labels agree {r['label_agreement']:.3%} "
                         f"({r['cpu_iters']} / {r['cuda_iters']} iterations) |")
        elif r["path"] == "student":
            lines.append(f"| student, fit 4,000 texts x 3 epochs, s | {r['cpu_s']:.2f} | {r['cuda_s']:.2f} | "
                         f"{r['cpu_s'] / r['cuda_s']:.1f}x | predictions agree {r['label_agreement']:.0%} |")
        elif r["path"] == "proxy LM":
            lines.append(f"| proxy LM (2 layers, d 64, ctx 128), tokens/s | {r['cpu_tokens_per_s']:,.0f} | "
                         f"{r['cuda_tokens_per_s']:,.0f} | {r['cuda_tokens_per_s'] / r['cpu_tokens_per_s']:.1f}x | "
                         f"bits per byte {r['cpu_bpb']:.6f} / {r['cuda_bpb']:.6f} |")
        elif r["path"] == "teacher embedder":
            lines.append(f"| teacher embedder, {r['docs']:,} texts of ~128 tokens, docs/s | {r['cpu_docs_per_s']:,.0f} | "
                         f"{r['cuda_docs_per_s']:,.0f} | {r['cuda_docs_per_s'] / r['cpu_docs_per_s']:.1f}x | min cosine "
                         f"{r['min_cosine']:.7f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--write", type=Path, default=None, help="replace the gpu_check section of this Markdown file")
    ap.add_argument("--device", default="cuda", help="'cpu': a dry run of the script on a machine without a GPU")
    args = ap.parse_args()
    global DEV
    DEV = args.device
    if DEV != "cpu" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (the CPU paths are covered by make test)")
        return 0
    name = torch.cuda.get_device_name(0) if DEV != "cpu" else "cpu (dry run)"
    print(f"device: {name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads", flush=True)
    rows = []
    for check in (lambda: check_gem(args.n), check_student, check_lm, check_embedder):
        try:
            out = check()
        except Exception as exc:  # report every path, even when one fails
            out = {"path": getattr(check, "__name__", "check"), "error": f"{type(exc).__name__}: {exc}"}
        for row in out if isinstance(out, list) else [out]:
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _report import machine, section, write_section

    ok = [r for r in rows if "error" not in r]
    gem = [r for r in ok if r["path"].startswith("GEM")]
    reading = (f"Reading: GEM K = 64 on the {args.n:,} x 384 float32 synthetic cone (CUDA timed after a warm-up fit), "
               f"at most 30 MM iterations; the other paths on small synthetic inputs. "
               + (f"Every path ran on both devices{'' if len(ok) == len(rows) else ' but ' + str(len(rows) - len(ok)) + ' failed'}; "
                  if rows else "")
               + ("GEM's objective on CUDA is within " + f"{max(r['objective_rel_diff'] for r in gem):.1e}"
                  + " (relative) of the CPU's. " if gem else "")
               + "A GEM iteration on a GPU is far from its arithmetic limit: what is left is the E-step's scalar "
               "synchronisations and the kappa solve, which runs on the CPU (numpy).")
    text = section(table(rows, torch.get_num_threads(), name), reading,
                   on=machine(extra=f"{name}, torch {torch.__version__}"))
    print(text)
    if args.write:
        write_section(args.write, "gpu_check", text, "Device check (`benchmarks/gpu_check.py`)")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
