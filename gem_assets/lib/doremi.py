"""DoReMi: domain weights from a proxy model trained with Group DRO (DESIGN.md section 5).

Xie et al., "DoReMi: Optimizing Data Mixtures Speeds Up Language Model Pretraining" (NeurIPS 2023).

Procedure
---------
1. A *reference* model is trained on the reference weights (natural token shares by default).
2. A *proxy* model of the same shape is trained with Group DRO over domains. At every step t a
   batch is drawn with **uniform** domain weights (DoReMi's Algorithm 1, so every domain is seen
   whatever its current weight), and for each domain k present in the batch

       excess_k = mean over the domain's bytes in the batch of max(l_proxy - l_ref, 0)

   (0 for a domain absent from the batch, leaving its weight unchanged). The domain weights move
   by exponentiated gradient ascent and are smoothed towards uniform
   (:func:`update_domain_weights`):

       log alpha <- log alpha + eta * excess;  log alpha <- log alpha - logsumexp(log alpha)
       alpha_smoothed = (1 - eps) * exp(log alpha) + eps / K

   and the proxy takes a gradient step on sum_k alpha_smoothed_k * excess_k.
3. The output is the mean of alpha_smoothed over the steps.

Defaults: eta = 1, eps = 1e-3. Each smoothed weight is at least eps / K and they sum to 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from ._checks import check_float
from .lm import (LMConfig, _check_training, _Deterministic, batch_from_streams, check_streams, domain_means,
                 evaluate_bpb, lr_at, new_model, normalize_weights, optimizer_step, resolve_device, token_losses,
                 train_lm)

__all__ = ["update_domain_weights", "DoremiResult", "run_doremi"]


def update_domain_weights(log_weights: np.ndarray, excess_losses: np.ndarray, step_size: float = 1.0,
                          smoothing: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """One DoReMi domain-weight update (exponentiated gradient ascent + smoothing).

    Parameters
    ----------
    log_weights : numpy.ndarray, shape (K,)
        Current log domain weights (any finite values; they need not be normalized).
    excess_losses : numpy.ndarray, shape (K,)
        Per-domain excess losses (finite, >= 0).
    step_size : float
        eta >= 0.
    smoothing : float
        eps in [0, 1]: weight mixed in from the uniform distribution.

    Returns
    -------
    new_log_weights : numpy.ndarray, shape (K,)
        ``log_weights + eta * excess`` normalized in log space (logsumexp = 0).
    smoothed : numpy.ndarray, shape (K,)
        ``(1 - eps) * exp(new_log_weights) + eps / K``: sums to 1, each >= eps / K.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    ex = np.asarray(excess_losses, dtype=np.float64)
    if lw.ndim != 1 or lw.size == 0:
        raise ValueError(f"log_weights must be a non-empty 1-D array (one per domain), got shape {lw.shape}")
    if ex.shape != lw.shape:
        raise ValueError(f"excess_losses has shape {ex.shape} but log_weights has {lw.shape}: one value per domain")
    if not np.all(np.isfinite(lw)):
        raise ValueError("log_weights hold NaN or inf: start from np.log of positive weights (e.g. zeros)")
    if not np.all(np.isfinite(ex)) or np.any(ex < 0):
        raise ValueError(f"excess_losses must be finite and >= 0 (they are clipped at 0), got {ex.tolist()}")
    eta = check_float(step_size, "step_size", low=0.0)
    eps = check_float(smoothing, "smoothing", low=0.0)
    if eps > 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {eps}")
    new = lw + eta * ex
    m = new.max()
    new = new - (m + np.log(np.exp(new - m).sum()))
    alpha = np.exp(new)
    smoothed = (1.0 - eps) * alpha / alpha.sum() + eps / lw.size
    return new, smoothed


@dataclass
class DoremiResult:
    """What :func:`run_doremi` produced.

    Attributes
    ----------
    weights : dict
        ``{domain: mean smoothed weight over the steps}`` (the output; sums to 1).
    trajectory : numpy.ndarray, shape (steps, K)
        Smoothed weights after each step.
    domains : list of str
    reference_weights : dict
        The reference model's sampling weights.
    reference_bpb, proxy_bpb : dict
        Bits per byte of the two models per domain on the evaluation streams.
    seconds : float
        Wall time of the whole procedure.
    excess : numpy.ndarray, shape (steps, K)
        The per-domain excess losses of each step (nats).
    reference_history, proxy_history : list of dict
        Training records (see ``lm.TrainResult.history``; the proxy's adds ``weights``).
    """

    weights: dict[str, float]
    trajectory: np.ndarray
    domains: list[str]
    reference_weights: dict[str, float]
    reference_bpb: dict[str, float]
    proxy_bpb: dict[str, float]
    seconds: float
    excess: np.ndarray | None = None
    reference_history: list | None = None
    proxy_history: list | None = None


def run_doremi(streams: Mapping[str, np.ndarray], reference_weights: Mapping[str, float] | None, config: LMConfig,
               steps: int, batch_size: int = 16, lr: float = 3e-3, seed: int = 0, step_size: float = 1.0,
               smoothing: float = 1e-3, device: str = "auto", progress: bool = False,
               valid_streams: Mapping[str, np.ndarray] | None = None,
               eval_max_tokens: int | None = 65536, cpu_threads: int | None = 1) -> DoremiResult:
    """Domain weights by DoReMi (reference model, then a Group DRO proxy).

    Parameters
    ----------
    streams : mapping of str to numpy.ndarray
        ``{domain: uint8 byte stream}`` (training split).
    reference_weights : mapping or None
        Reference model's sampling weights; None: natural token shares.
    config : LMConfig
        Shape of both models.
    steps, batch_size, lr, seed :
        Training of each model (the proxy uses seed + 1 for its batches, the same initial weights).
    step_size, smoothing : float
        eta and eps of :func:`update_domain_weights`.
    device : str
    progress : bool
        tqdm bars.
    valid_streams : mapping, optional
        Streams to report the two models' bits per byte on (default: ``streams``).
    eval_max_tokens : int, optional
        Cap on predicted bytes per evaluated stream.
    cpu_threads : int, optional
        torch threads on CPU (see ``lm.train_lm``).

    Returns
    -------
    DoremiResult
    """
    t0 = time.perf_counter()
    streams = check_streams(streams)
    steps, batch_size, lr, seed = _check_training(config, steps, batch_size, lr, seed)
    check_float(step_size, "step_size", low=0.0)
    eps = check_float(smoothing, "smoothing", low=0.0)
    if eps > 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {eps}")
    keys = list(streams)
    k = len(keys)
    ref_w = dict(zip(keys, normalize_weights(reference_weights, streams).tolist()))
    dev = resolve_device(device)

    ref = train_lm(streams, ref_w, config, steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                   progress=progress, cpu_threads=cpu_threads)
    ref_model = ref.model.eval()
    for p in ref_model.parameters():
        p.requires_grad_(False)

    from tqdm.auto import tqdm

    uniform = {key: 1.0 / k for key in keys}
    rng = np.random.default_rng(seed + 1)
    log_w = np.full(k, -np.log(k))
    trajectory = np.empty((steps, k))
    excess_all = np.empty((steps, k))
    history: list[dict] = []
    log_every = max(1, steps // 50)
    with _Deterministic(dev, cpu_threads):
        proxy, opt = new_model(config, seed, dev)
        proxy.train()
        t1 = time.perf_counter()
        for step in tqdm(range(steps), desc="DoReMi proxy", unit="step", disable=not progress):
            x, y, dom = batch_from_streams(streams, uniform, batch_size, config.context, rng)
            x_t, y_t, dom_t = (torch.from_numpy(a).to(dev) for a in (x, y, dom))
            with torch.no_grad():
                l_ref = token_losses(ref_model, x_t, y_t)
            l_proxy = token_losses(proxy, x_t, y_t)
            row_excess = (l_proxy - l_ref).clamp(min=0).mean(1)        # (B,) mean over each row's bytes
            excess, _ = domain_means(row_excess, dom_t, k)             # rows have equal length: token mean
            log_w, alpha = update_domain_weights(log_w, excess.detach().double().cpu().numpy(), step_size, eps)
            trajectory[step], excess_all[step] = alpha, excess.detach().double().cpu().numpy()
            loss = (torch.as_tensor(alpha, dtype=excess.dtype, device=dev) * excess).sum()
            rate = lr_at(step, steps, lr)
            optimizer_step(proxy, opt, loss, rate)
            if (step + 1) % log_every == 0 or step == steps - 1:
                history.append({"step": step + 1, "dro_loss": float(loss.detach()),
                                "loss": float(l_proxy.detach().mean()), "lr": rate,
                                "seconds": time.perf_counter() - t1,
                                "weights": dict(zip(keys, alpha.tolist()))})
    proxy.eval()
    evals = check_streams(valid_streams, name="valid_streams") if valid_streams is not None else streams
    ref_bpb = evaluate_bpb(ref_model, evals, max_tokens=eval_max_tokens, device=device, cpu_threads=cpu_threads)
    proxy_bpb = evaluate_bpb(proxy, evals, max_tokens=eval_max_tokens, device=device, cpu_threads=cpu_threads)
    mean = trajectory.mean(0)
    mean = mean / mean.sum()
    return DoremiResult(weights=dict(zip(keys, mean.tolist())), trajectory=trajectory, domains=keys,
                        reference_weights=ref_w, reference_bpb=ref_bpb, proxy_bpb=proxy_bpb,
                        seconds=time.perf_counter() - t0, excess=excess_all, reference_history=ref.history,
                        proxy_history=history)
