"""DoReMi: domain weights from a proxy model trained with Group DRO.

Xie et al., "DoReMi: Optimizing Data Mixtures Speeds Up Language Model Pretraining" (NeurIPS 2023).

Procedure
---------
1. A *reference* model is trained on the reference weights: by default the natural token shares
   (each domain's share of the bytes), DoReMi's choice.
2. A *proxy* model of the same shape is trained with Group DRO over domains. Every batch holds
   every domain: each of the K domains gets floor(B / K) or ceil(B / K) of the B rows
   (``batch_from_streams(..., stratified=True)``; the remainder rows go to distinct domains drawn
   uniformly), so every domain weight is updated at every step from that domain's own bytes. At
   step t, for each domain k,

       excess_k = mean over the domain's bytes in the batch of max(l_proxy - l_ref, 0)

   (per-byte losses in nats, clipped at 0 byte by byte, then averaged over the domain's bytes).
   The domain weights move by exponentiated gradient ascent and are smoothed towards uniform
   (:func:`update_domain_weights`, the one update rule, shared with ``lib.count_proxy``):

       log alpha <- log alpha + eta * excess;  log alpha <- log alpha - logsumexp(log alpha)
       alpha_smoothed = (1 - eps) * exp(log alpha) + eps / K

   and the proxy takes a gradient step on sum_k alpha_smoothed_k * excess_k.
3. The output is the mean of alpha_smoothed over the steps.

Step size
---------
The update is Hedge (online mirror descent on the simplex) over T = ``steps`` updates. A domain
whose excess exceeds another's by delta nats at every step ends up exp(eta * T * delta) times
heavier, so eta = 1 at each of hundreds of steps turns a 0.1-nat difference into a factor e^40:
the weights collapse on one domain. Hedge's regret bound picks eta of order sqrt(log K / T) / L
for losses of range L; per-byte excess losses of byte models are O(1) nats (an untrained proxy's
is at most about ln 256 = 5.5 nats, once it trains mostly below 1). The default is therefore

    eta = step_scale / sqrt(T)        (step_scale = 1 per nat)

so that a persistent difference delta moves the log weights by sqrt(T) * delta in all: for
T = 400 steps and delta = 0.1 nat a factor e^2 = 7.4 between two domains, enough to act on and
far from collapse. ``step_size`` overrides it. Smoothing eps = 1e-3 keeps each weight >= eps / K.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from gem_assets.lib.util.checks import check_float, check_int
from gem_assets.lib.mixing.lm import (LMConfig, _check_training, _Deterministic, batch_from_streams, check_stratified, check_streams,
                 evaluate_bpb, lr_at, new_model, normalize_weights, optimizer_step, progress_steps, resolve_device,
                 token_losses, train_lm)

__all__ = ["update_domain_weights", "default_step_size", "domain_excess", "DoremiResult", "run_doremi"]


def default_step_size(steps: int, step_scale: float = 1.0) -> float:
    """DoReMi's default step size for ``steps`` updates: ``step_scale / sqrt(steps)`` (see the module docstring)."""
    steps = check_int(steps, "steps", low=1)
    return check_float(step_scale, "step_scale", low=0.0) / math.sqrt(steps)


def domain_excess(l_proxy: torch.Tensor, l_ref: torch.Tensor, dom: torch.Tensor, k: int) -> torch.Tensor:
    """Per-domain excess loss: the mean over each domain's bytes of ``max(l_proxy - l_ref, 0)``.

    Parameters
    ----------
    l_proxy, l_ref : torch.Tensor, shape (B, T)
        Per-byte losses (nats) of the proxy and the reference on the same rows.
    dom : torch.Tensor of int64, shape (B,)
        Each row's domain in 0..k-1.
    k : int
        Number of domains.

    Returns
    -------
    torch.Tensor, shape (k,)
        Differentiable through ``l_proxy``; 0 for a domain with no row in the batch.
    """
    per_byte = (l_proxy - l_ref).clamp(min=0)                                     # (B, T)
    sums = torch.zeros(k, dtype=per_byte.dtype, device=per_byte.device).index_add_(0, dom, per_byte.sum(1))
    counts = torch.bincount(dom, minlength=k).to(per_byte.dtype) * per_byte.shape[1]   # bytes per domain
    return sums / counts.clamp(min=1)


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
        eta >= 0 of this one update (:func:`run_doremi` uses :func:`default_step_size` unless
        told otherwise).
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
    step_size : float
        The eta used.
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
    step_size: float | None = None


def run_doremi(streams: Mapping[str, np.ndarray], reference_weights: Mapping[str, float] | None, config: LMConfig,
               steps: int, batch_size: int = 16, lr: float = 3e-3, seed: int = 0, step_size: float | None = None,
               smoothing: float = 1e-3, device: str = "auto", progress: bool = False,
               valid_streams: Mapping[str, np.ndarray] | None = None,
               eval_max_tokens: int | None = 65536, cpu_threads: int | None = 1,
               step_scale: float = 1.0) -> DoremiResult:
    """Domain weights by DoReMi (reference model, then a Group DRO proxy).

    Parameters
    ----------
    streams : mapping of str to numpy.ndarray
        ``{domain: uint8 byte stream}`` (training split), K domains.
    reference_weights : mapping or None
        Reference model's sampling weights; None: natural token shares (stream lengths).
    config : LMConfig
        Shape of both models.
    steps, batch_size, lr, seed :
        Training of each model (the proxy uses seed + 1 for its batches, the same initial
        weights). The proxy's batches hold every domain, so ``batch_size`` must be >= K.
    step_size : float, optional
        eta of :func:`update_domain_weights`; None: :func:`default_step_size` (``step_scale /
        sqrt(steps)``, see the module docstring).
    smoothing : float
        eps of :func:`update_domain_weights`.
    device : str
    progress : bool
        tqdm bars.
    valid_streams : mapping, optional
        Streams to report the two models' bits per byte on (default: ``streams``).
    eval_max_tokens : int, optional
        Cap on predicted bytes per evaluated stream.
    cpu_threads : int, optional
        torch threads on CPU (see ``lm.train_lm``).
    step_scale : float
        The default step size's scale (per nat of excess loss), used when ``step_size`` is None.

    Returns
    -------
    DoremiResult

    Raises
    ------
    ValueError
        On invalid arguments, including ``batch_size`` smaller than the number of domains.
    """
    t0 = time.perf_counter()
    streams = check_streams(streams)
    steps, batch_size, lr, seed = _check_training(config, steps, batch_size, lr, seed)
    eta = default_step_size(steps, step_scale) if step_size is None else check_float(step_size, "step_size", low=0.0)
    eps = check_float(smoothing, "smoothing", low=0.0)
    if eps > 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {eps}")
    keys = list(streams)
    k = len(keys)
    check_stratified(batch_size, k)
    ref_w = dict(zip(keys, normalize_weights(reference_weights, streams).tolist()))
    dev = resolve_device(device)

    ref = train_lm(streams, ref_w, config, steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                   progress=progress, cpu_threads=cpu_threads)
    ref_model = ref.model.eval()
    for p in ref_model.parameters():
        p.requires_grad_(False)

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
        for step in progress_steps(steps, "DoReMi proxy", progress):
            x, y, dom = batch_from_streams(streams, None, batch_size, config.context, rng, stratified=True)
            x_t, y_t, dom_t = (torch.from_numpy(a).to(dev) for a in (x, y, dom))
            with torch.no_grad():
                l_ref = token_losses(ref_model, x_t, y_t)
            l_proxy = token_losses(proxy, x_t, y_t)
            excess = domain_excess(l_proxy, l_ref, dom_t, k)                    # (K,), every domain present
            ex = excess.detach().double().cpu().numpy()
            log_w, alpha = update_domain_weights(log_w, ex, eta, eps)
            trajectory[step], excess_all[step] = alpha, ex
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
                        proxy_history=history, step_size=eta)
