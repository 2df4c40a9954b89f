"""Proxy language models: a compact causal transformer over bytes.

Mixture optimizers (DoReMi, RegMix) and the mixture evaluation train many small language models
on byte streams, one stream per domain. Working on bytes (vocabulary 256) needs no tokenizer and
the loss in *bits per byte* (mean cross-entropy in nats divided by ln 2) compares across
bucketizations and corpora.

Model
-----
nanoGPT style: token embedding (256 x d) + learned positions (context x d), ``n_layer`` pre-norm
blocks ``x += Attn(LN(x)); x += MLP(LN(x))`` with causal multi-head self-attention
(``torch.nn.functional.scaled_dot_product_attention``) and a 4x GELU MLP, a final LayerNorm and
an output layer tied to the token embedding. Weights start N(0, 0.02), residual projections
N(0, 0.02 / sqrt(2 n_layer)).

Batches
-------
:func:`batch_from_streams` draws each row's domain from the sampling weights, then a start
position uniformly in that domain's stream; a row is ``context + 1`` consecutive bytes (inputs
and next-byte targets). Streams are read cyclically: a window that runs past the end continues
at the start, so a domain shorter than the context still yields full rows (its documents are
separated by a separator byte, see ``lib/mixing/streams.py``, so the wrap joins two documents as the
stream does everywhere else).

With ``stratified=True`` every domain is in every batch: each of the K domains gets
``floor(B / K)`` or ``ceil(B / K)`` rows (DoReMi's proxy batches, ``lib/mixing/doremi.py``).

Training
--------
AdamW (betas 0.9/0.95, no weight decay), linear warm-up over the first 5% of steps then cosine
decay to 10% of ``lr``, gradient clipping at norm 1. Seeded: ``torch.manual_seed(seed)`` fixes
the initial weights and a ``numpy.random.Generator(seed)`` the batches; on CPU
``torch.use_deterministic_algorithms`` is switched on for the duration (and restored), so the
same seed, data and thread count give the same weights and losses.

Many models at once
-------------------
:func:`train_lm_batch` trains M models of one shape, one per mixture, as one computation: the
parameters are stacked with a leading model dimension and the forward pass is written with
batched matrix products (:func:`batched_logits`); model m follows the recipe above with its own
seed and mixture (the same as training it alone, up to floating-point rounding).
:func:`evaluate_bpb_batch` scores M models on the same windows.

Evaluation
----------
:func:`evaluate_bpb` slides non-overlapping windows of ``context`` predicted bytes over a stream
(each window is fed ``context`` bytes and predicts the next byte of each), so every byte after the
first is predicted exactly once, with at most ``context - 1`` bytes of left context. With
``max_tokens`` it takes evenly spaced windows up to that many predicted bytes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gem_assets.lib.util.checks import check_float, check_int
from gem_assets.lib.util.checks import resolve_device as _resolve_device

__all__ = ["LMConfig", "ByteLM", "resolve_device", "batch_from_streams", "TrainResult", "train_lm",
           "BatchTrainResult", "train_lm_batch", "evaluate_bpb_batch", "batched_logits", "stack_models",
           "evaluate_bpb", "token_losses", "lr_at", "check_streams", "normalize_weights", "VOCAB"]

#: Bytes: the vocabulary of every proxy model.
VOCAB = 256
_LN2 = math.log(2.0)


@dataclass(frozen=True)
class LMConfig:
    """Shape of a :class:`ByteLM`.

    Parameters
    ----------
    n_layer : int
        Transformer blocks (>= 1).
    n_head : int
        Attention heads (>= 1); must divide ``d_model``.
    d_model : int
        Width of the residual stream (>= 8).
    context : int
        Bytes of context (>= 2); also the length of every training row.
    dropout : float
        Dropout in [0, 1) on attention and residual outputs (0 for proxies).
    """

    n_layer: int = 2
    n_head: int = 2
    d_model: int = 64
    context: int = 128
    dropout: float = 0.0

    def __post_init__(self):
        check_int(self.n_layer, "LMConfig.n_layer", low=1)
        check_int(self.n_head, "LMConfig.n_head", low=1)
        check_int(self.d_model, "LMConfig.d_model", low=8)
        check_int(self.context, "LMConfig.context", low=2)
        check_float(self.dropout, "LMConfig.dropout", low=0.0)
        if self.d_model % self.n_head:
            raise ValueError(f"LMConfig.d_model ({self.d_model}) must be a multiple of n_head ({self.n_head}): "
                             "pick d_model = n_head * head size")
        if self.dropout >= 1.0:
            raise ValueError(f"LMConfig.dropout must be < 1, got {self.dropout}")

    def n_params(self) -> int:
        """Trainable parameters (the tied output layer counted once)."""
        d = self.d_model
        block = 4 * d + 4 * d * d + 4 * d + 8 * d * d + 5 * d  # 2 LN, attn qkv+proj (+bias), MLP (+bias)
        return VOCAB * d + self.context * d + self.n_layer * block + 2 * d


class _Block(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        shape = (b, t, self.n_head, d // self.n_head)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))


class ByteLM(nn.Module):
    """Causal transformer over bytes; ``forward(idx)`` maps (B, T) int64 bytes to (B, T, 256) logits."""

    def __init__(self, config: LMConfig):
        super().__init__()
        if not isinstance(config, LMConfig):
            raise ValueError(f"config must be an LMConfig, got {type(config).__name__}")
        self.config = config
        self.tok = nn.Embedding(VOCAB, config.d_model)
        self.pos = nn.Embedding(config.context, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.apply(self._init)
        for blk in self.blocks:  # GPT-2: scale the residual projections by depth
            for lin in (blk.proj, blk.out):
                nn.init.normal_(lin.weight, 0.0, 0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.config.context:
            raise ValueError(f"sequence length {t} exceeds the model's context {self.config.context}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(pos)[None])
        for blk in self.blocks:
            x = blk(x)
        return self.ln_f(x) @ self.tok.weight.T  # tied output layer


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; otherwise ``torch.device(device)`` (CUDA checked)."""
    return _resolve_device(device)


# --------------------------------------------------------------------------- inputs
def check_streams(streams: Mapping[str, np.ndarray], *, name: str = "streams") -> dict[str, np.ndarray]:
    """Validate ``{domain: byte stream}``: a non-empty mapping of 1-D uint8 arrays of >= 2 bytes."""
    if not isinstance(streams, Mapping) or not streams:
        raise ValueError(f"{name} must be a non-empty mapping {{domain: uint8 byte stream}}")
    out = {}
    for key, s in streams.items():
        a = np.asarray(s)
        if a.ndim != 1:
            raise ValueError(f"{name}[{key!r}] must be a 1-D byte stream, got shape {a.shape}")
        if a.dtype != np.uint8:
            raise ValueError(f"{name}[{key!r}] must have dtype uint8 (bytes), got {a.dtype}; "
                             "build streams with lib.mixing.streams.texts_to_streams")
        if a.size < 2:
            raise ValueError(f"{name}[{key!r}] holds {a.size} byte(s): a stream needs >= 2 bytes "
                             "(an input and a target); drop empty domains")
        out[str(key)] = a
    return out


def normalize_weights(weights: Mapping[str, float] | None, streams: Mapping[str, np.ndarray]) -> np.ndarray:
    """Sampling weights as a float64 vector over ``streams``' keys, summing to 1.

    ``None`` gives the natural token shares (stream lengths). Keys of ``weights`` missing from
    ``streams`` are an error; domains missing from ``weights`` get weight 0.
    """
    keys = list(streams)
    if weights is None:
        w = np.array([np.asarray(streams[k]).size for k in keys], dtype=np.float64)
    else:
        if not isinstance(weights, Mapping):
            raise ValueError(f"weights must be a mapping {{domain: weight}} or None, got {type(weights).__name__}")
        extra = sorted(set(map(str, weights)) - set(keys))
        if extra:
            raise ValueError(f"weights name domains that have no stream: {extra[:5]}; streams are {keys[:5]}...")
        w = np.array([float(weights.get(k, 0.0)) for k in keys], dtype=np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights must be finite and >= 0, got {dict(zip(keys, w.tolist()))}")
    total = w.sum()
    if total <= 0:
        raise ValueError("weights sum to 0: give at least one domain a positive weight")
    return w / total


def _draw_starts(dom: np.ndarray, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # one start per row, uniform in its domain's stream; drawn domain by domain in increasing domain order
    # (one rng.integers call per domain present): the draw order that fixes train_lm's batches under a seed
    start = np.empty(dom.size, dtype=np.int64)
    for k in np.unique(dom):
        sel = np.flatnonzero(dom == k)
        start[sel] = rng.integers(0, sizes[k], size=sel.size)
    return start


def _draw_rows(p: np.ndarray, sizes: np.ndarray, batch_size: int, rng: np.random.Generator,
               stratified: bool = False) -> tuple[np.ndarray, np.ndarray]:
    # (domain, start) of each row of one batch: the sampling protocol of batch_from_streams
    k = sizes.size
    if stratified:
        q, r = divmod(batch_size, k)
        counts = np.full(k, q, dtype=np.int64)
        counts[rng.choice(k, size=r, replace=False)] += 1   # remainder rows: distinct domains, uniformly
        dom = np.repeat(np.arange(k, dtype=np.int64), counts)
    else:
        dom = rng.choice(k, size=batch_size, p=p).astype(np.int64)
    return dom, _draw_starts(dom, sizes, rng)


def batch_from_streams(streams: Mapping[str, np.ndarray], weights: Mapping[str, float] | None, batch_size: int,
                       context: int, rng: np.random.Generator,
                       stratified: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw a training batch of byte windows from domain streams.

    Parameters
    ----------
    streams : mapping of str to numpy.ndarray
        ``{domain: uint8 byte stream}``; read cyclically.
    weights : mapping of str to float or None
        Probability of each domain per row (normalized; None: natural token shares). Must be
        None when ``stratified``.
    batch_size, context : int
        Rows and bytes per row.
    rng : numpy.random.Generator
        Source of the domains and start positions.
    stratified : bool
        Every domain in every batch (DoReMi's proxy batches): each of the K domains gets
        ``floor(batch_size / K)`` or ``ceil(batch_size / K)`` rows, the ``batch_size mod K``
        remainder rows going to distinct domains drawn uniformly; rows are grouped by domain.
        Needs ``batch_size >= K``.

    Returns
    -------
    x, y : numpy.ndarray of int64, shape (batch_size, context)
        Inputs and next-byte targets (``y[:, t] = x[:, t + 1]`` inside a row).
    domain_idx : numpy.ndarray of int64, shape (batch_size,)
        Position of each row's domain in ``list(streams)``.

    Raises
    ------
    ValueError
        On invalid streams or weights, ``weights`` given with ``stratified``, or a stratified
        batch smaller than the number of domains.
    """
    streams = check_streams(streams)
    batch_size = check_int(batch_size, "batch_size", low=1)
    context = check_int(context, "context", low=1)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    keys = list(streams)
    if stratified:
        if weights is not None:
            raise ValueError("stratified batches spread the rows evenly over the domains: pass weights=None")
        check_stratified(batch_size, len(keys))
        p = None
    else:
        p = normalize_weights(weights, streams)
    sizes = np.array([streams[key].size for key in keys], dtype=np.int64)
    dom, start = _draw_rows(p, sizes, batch_size, rng, stratified)
    rows = np.empty((batch_size, context + 1), dtype=np.int64)
    offs = np.arange(context + 1)
    for k in np.unique(dom):
        s = streams[keys[k]]
        sel = np.flatnonzero(dom == k)
        rows[sel] = s[(start[sel][:, None] + offs[None, :]) % s.size]
    return rows[:, :-1], rows[:, 1:], dom


def check_stratified(batch_size: int, n_domains: int) -> None:
    """Raise ValueError when a stratified batch of ``batch_size`` rows cannot hold all ``n_domains`` domains."""
    if batch_size < n_domains:
        raise ValueError(f"batch_size ({batch_size}) is smaller than the number of domains ({n_domains}): "
                         f"every domain needs a row in every batch, so raise batch_size to at least {n_domains}")


# --------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """A trained model and its training record.

    Attributes
    ----------
    model : ByteLM
        The trained model (on the training device, in eval mode).
    history : list of dict
        Per logged step: ``step``, ``loss`` (batch mean, nats), ``bpb`` (the same in bits),
        ``lr``, ``tokens`` (cumulative), ``seconds`` (cumulative) and ``domain_loss``
        ({domain: batch mean loss in nats} for the domains present in that batch).
    tokens_per_second : float
        Training throughput (predicted bytes per second of the loop).
    tokens : int
        Bytes predicted in training (steps x batch_size x context).
    domains : list of str
        Domain order (the streams' keys).
    weights : dict
        The sampling weights used (normalized).
    """

    model: ByteLM
    history: list[dict]
    tokens_per_second: float
    tokens: int
    domains: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)


def lr_at(step: int, steps: int, lr: float) -> float:
    """Learning rate at 0-based ``step``: linear warm-up over 5% of ``steps``, cosine to 0.1 * lr."""
    warm = max(1, int(round(0.05 * steps)))
    if step < warm:
        return lr * (step + 1) / warm
    frac = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac))))


def token_losses(model: ByteLM, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-byte cross-entropy in nats, shape (B, T)."""
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), reduction="none").view(y.shape)


class _Deterministic:
    """On CPU, for a block: torch's deterministic algorithms on, ``threads`` intra-op threads.

    Both settings are restored on exit. Proxy models are small (d_model <= a few hundred), so
    their GEMMs gain little from intra-op threads, and a second thread competes for a core with
    whatever else runs beside the proxy (``python benchmarks/proxy.py`` times 1 and 2 threads,
    docs/benchmarks.md). ``threads=None`` leaves torch's setting.
    """

    def __init__(self, device: torch.device, threads: int | None = None):
        self.on = device.type == "cpu"
        self.threads = threads

    def __enter__(self):
        self.prev = torch.are_deterministic_algorithms_enabled()
        self.prev_threads = torch.get_num_threads()
        if self.on:
            torch.use_deterministic_algorithms(True)
            if self.threads is not None:
                torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc):
        if self.on:
            torch.use_deterministic_algorithms(self.prev)
            if self.threads is not None:
                torch.set_num_threads(self.prev_threads)
        return False


def progress_steps(steps: int, desc: str, progress: bool):
    """``range(steps)``, behind a tqdm bar when ``progress`` (tqdm is imported only then)."""
    if not progress:
        return range(steps)
    from tqdm.auto import tqdm

    return tqdm(range(steps), desc=desc, unit="step")


def _check_training(config, steps, batch_size, lr, seed) -> tuple[int, int, float, int]:
    if not isinstance(config, LMConfig):
        raise ValueError(f"config must be an LMConfig, got {type(config).__name__}")
    return (check_int(steps, "steps", low=1), check_int(batch_size, "batch_size", low=1),
            check_float(lr, "lr", low=0.0, strict=True), check_int(seed, "seed", low=0))


def new_model(config: LMConfig, seed: int, device: torch.device) -> tuple[ByteLM, torch.optim.Optimizer]:
    """A freshly initialized model (seeded) and its AdamW optimizer."""
    torch.manual_seed(seed)
    model = ByteLM(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    return model, opt


def optimizer_step(model: ByteLM, opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> None:
    """One clipped AdamW step on ``loss`` at learning rate ``lr``."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def domain_means(values: torch.Tensor, dom: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of per-row values (B,) per domain (K,) and the rows per domain; 0 where a domain has no row."""
    counts = torch.bincount(dom, minlength=k).to(values.dtype)
    sums = torch.zeros(k, dtype=values.dtype, device=values.device).index_add_(0, dom, values)
    return sums / counts.clamp(min=1), counts


def train_lm(streams: Mapping[str, np.ndarray], weights: Mapping[str, float] | None, config: LMConfig, steps: int,
             batch_size: int = 16, lr: float = 3e-3, seed: int = 0, device: str = "auto",
             progress: bool = False, log_every: int | None = None, cpu_threads: int | None = 1) -> TrainResult:
    """Train a :class:`ByteLM` on a weighted mixture of domain byte streams.

    Parameters
    ----------
    streams : mapping of str to numpy.ndarray
        ``{domain: uint8 byte stream}`` (training split).
    weights : mapping of str to float or None
        Sampling weight per domain (normalized; None: natural token shares).
    config : LMConfig
        Model shape.
    steps, batch_size : int
        Optimizer steps and rows per step.
    lr : float
        Peak learning rate (> 0).
    seed : int
        Seeds the initial weights and the batches.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    progress : bool
        Show a tqdm bar over the steps.
    log_every : int, optional
        Record the history every this many steps (default: about 50 records) and at the last step.
    cpu_threads : int, optional
        torch intra-op threads while training on CPU (default 1, see ``_Deterministic``; None:
        leave torch's setting). Restored afterwards.

    Returns
    -------
    TrainResult
    """
    streams = check_streams(streams)
    steps, batch_size, lr, seed = _check_training(config, steps, batch_size, lr, seed)
    p = normalize_weights(weights, streams)
    keys = list(streams)
    wmap = dict(zip(keys, p.tolist()))
    log_every = max(1, steps // 50) if log_every is None else check_int(log_every, "log_every", low=1)
    dev = resolve_device(device)
    if cpu_threads is not None:
        cpu_threads = check_int(cpu_threads, "cpu_threads", low=1)
    rng = np.random.default_rng(seed)

    history: list[dict] = []
    with _Deterministic(dev, cpu_threads):
        model, opt = new_model(config, seed, dev)
        model.train()
        t0 = time.perf_counter()
        tokens = 0
        for step in progress_steps(steps, "proxy LM", progress):
            x, y, dom = batch_from_streams(streams, wmap, batch_size, config.context, rng)
            x_t, y_t = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
            losses = token_losses(model, x_t, y_t)
            loss = losses.mean()
            rate = lr_at(step, steps, lr)
            optimizer_step(model, opt, loss, rate)
            tokens += x.size
            if (step + 1) % log_every == 0 or step == steps - 1:
                dom_t = torch.from_numpy(dom).to(dev)
                means, counts = domain_means(losses.detach().mean(1).double(), dom_t, len(keys))
                lv = float(loss.detach())
                history.append({"step": step + 1, "loss": lv, "bpb": lv / _LN2, "lr": rate, "tokens": tokens,
                                "seconds": time.perf_counter() - t0,
                                "domain_loss": {keys[k]: float(means[k]) for k in range(len(keys)) if counts[k] > 0}})
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    model.eval()
    return TrainResult(model=model, history=history, tokens_per_second=tokens / max(seconds, 1e-9), tokens=tokens,
                       domains=keys, weights=wmap)


# --------------------------------------------------------------------------- evaluation
def _windows(n: int, context: int, max_tokens: int | None) -> list[tuple[int, int]]:
    # (start, length) of non-overlapping input windows; each predicts `length` bytes (n - 1 in all).
    # Only the windows kept are built: memory follows max_tokens, not the stream's length.
    count = -(-(n - 1) // context) if n > 1 else 0
    if max_tokens is not None and n - 1 > max_tokens:
        m = max(1, max_tokens // context)
        idx = np.unique(np.linspace(0, count - 1, m).round().astype(int)).tolist()
    else:
        idx = range(count)
    return [(i * context, min(context, n - 1 - i * context)) for i in idx]


@torch.no_grad()
def _stream_bpb(model: ByteLM, stream: np.ndarray, batch_size: int, max_tokens: int | None,
                dev: torch.device) -> float:
    ctx = model.config.context
    wins = _windows(stream.size, ctx, max_tokens)
    total, count = 0.0, 0
    s = torch.from_numpy(np.ascontiguousarray(stream, dtype=np.uint8))  # bytes; only the windows become int64
    full = [w for w in wins if w[1] == ctx]
    for i in range(0, len(full), batch_size):
        starts = torch.tensor([w[0] for w in full[i:i + batch_size]])
        idx = starts[:, None] + torch.arange(ctx + 1)[None, :]
        rows = s[idx].long().to(dev)
        losses = token_losses(model, rows[:, :-1], rows[:, 1:])
        total += float(losses.double().sum())
        count += losses.numel()
    for start, length in wins:  # the short tail window, if any
        if length < ctx:
            rows = s[start:start + length + 1][None].long().to(dev)
            losses = token_losses(model, rows[:, :-1], rows[:, 1:])
            total += float(losses.double().sum())
            count += losses.numel()
    return total / count / _LN2


def evaluate_bpb(model: ByteLM, stream_or_streams, batch_size: int = 32, max_tokens: int | None = None,
                 device: str = "auto", cpu_threads: int | None = 1) -> float | dict[str, float]:
    """Bits per byte of ``model`` on one stream or on each of ``{name: stream}``.

    Parameters
    ----------
    model : ByteLM
    stream_or_streams : numpy.ndarray or mapping of str to numpy.ndarray
        uint8 byte stream(s) of >= 2 bytes.
    batch_size : int
        Windows per forward pass.
    max_tokens : int, optional
        At most about this many predicted bytes per stream (evenly spaced windows); None: all.
    device : str
    cpu_threads : int, optional
        torch intra-op threads on CPU during the evaluation (None: leave torch's setting).

    Returns
    -------
    float or dict of str to float
        Mean cross-entropy in nats over the predicted bytes, divided by ln 2.
    """
    if not isinstance(model, ByteLM):
        raise ValueError(f"model must be a ByteLM, got {type(model).__name__}")
    batch_size = check_int(batch_size, "batch_size", low=1)
    if max_tokens is not None:
        max_tokens = check_int(max_tokens, "max_tokens", low=1)
    single = not isinstance(stream_or_streams, Mapping)
    streams = check_streams({"stream": stream_or_streams} if single else stream_or_streams)
    dev = resolve_device(device)
    was_training = model.training
    model.eval()
    model.to(dev)
    try:
        with _Deterministic(dev, cpu_threads):
            out = {k: _stream_bpb(model, s, batch_size, max_tokens, dev) for k, s in streams.items()}
    finally:
        model.train(was_training)
    return out["stream"] if single else out


# --------------------------------------------------------------------------- many models at once
# Design: M models of one shape are held as *stacked* parameters, one tensor per ByteLM parameter
# with a leading model dimension (M, ...), built from M ordinary modules by
# torch.func.stack_module_state. The forward pass is written out with batched matrix products
# (torch.baddbmm / torch.bmm, the model dimension as the bmm batch) rather than by torch.vmap over
# torch.func.functional_call: the written-out pass folds the model dimension into the batch
# dimension of scaled_dot_product_attention, so the fused attention kernels serve all M models in
# one call, it runs under torch's deterministic mode on CPU, and it does not depend on which
# operators vmap has batching rules for. Every parameter keeps ByteLM's name, so one slice of the
# stack loads into a ByteLM as is. AdamW is elementwise, so one AdamW over the stacked tensors
# is M independent AdamWs; only the gradient clipping couples a model's tensors, and it is done
# per model (the norm over each model's slice of every gradient).

#: Row samplers of :func:`train_lm_batch`.
SAMPLERS = ("exact", "fast")


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # x (M, N, in), w (M, out, in), b (M, out) -> (M, N, out)
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # x (M, N, d), w and b (M, d)
    return torch.addcmul(b.unsqueeze(1), F.layer_norm(x, x.shape[-1:]), w.unsqueeze(1))


def batched_logits(params: Mapping[str, torch.Tensor], config: LMConfig, idx: torch.Tensor) -> torch.Tensor:
    """Logits of M stacked :class:`ByteLM` models, each on its own rows.

    Parameters
    ----------
    params : mapping of str to torch.Tensor
        ``{name: (M, *shape)}`` for every ``ByteLM.named_parameters()`` name (see
        :func:`stack_models`).
    config : LMConfig
        The models' shape (dropout is not applied).
    idx : torch.Tensor of int64, shape (M, B, T)
        Bytes; row block ``idx[m]`` goes through model m. T <= ``config.context``.

    Returns
    -------
    torch.Tensor, shape (M, B, T, 256)
    """
    m, b, t = idx.shape
    if t > config.context:
        raise ValueError(f"sequence length {t} exceeds the models' context {config.context}")
    d, h = config.d_model, config.n_head
    tok = params["tok.weight"]                                                  # (M, 256, d)
    shift = (torch.arange(m, device=idx.device) * VOCAB).view(m, 1, 1)
    x = F.embedding(idx + shift, tok.reshape(m * VOCAB, d)) + params["pos.weight"][:, None, :t]
    x = x.reshape(m, b * t, d)
    for i in range(config.n_layer):
        pre = f"blocks.{i}."
        qkv = _linear(_layer_norm(x, params[pre + "ln1.weight"], params[pre + "ln1.bias"]),
                      params[pre + "qkv.weight"], params[pre + "qkv.bias"])
        shape = (m * b, t, h, d // h)
        q, k, v = (z.reshape(shape).transpose(1, 2) for z in qkv.split(d, dim=2))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)           # (M B, h, T, d / h)
        x = x + _linear(a.transpose(1, 2).reshape(m, b * t, d), params[pre + "proj.weight"], params[pre + "proj.bias"])
        hid = F.gelu(_linear(_layer_norm(x, params[pre + "ln2.weight"], params[pre + "ln2.bias"]),
                             params[pre + "fc.weight"], params[pre + "fc.bias"]))
        x = x + _linear(hid, params[pre + "out.weight"], params[pre + "out.bias"])
    x = _layer_norm(x, params["ln_f.weight"], params["ln_f.bias"])
    return torch.bmm(x, tok.transpose(1, 2)).view(m, b, t, VOCAB)             # tied output layer


def batched_token_losses(params: Mapping[str, torch.Tensor], config: LMConfig, x: torch.Tensor,
                         y: torch.Tensor) -> torch.Tensor:
    """Per-byte cross-entropy in nats of M stacked models, shape (M, B, T); ``x``, ``y`` are (M, B, T)."""
    logits = batched_logits(params, config, x)
    return F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), reduction="none").view(y.shape)


def stack_models(models) -> tuple[dict[str, torch.Tensor], LMConfig]:
    """Stack M :class:`ByteLM` of one config into ``{name: (M, *shape)}`` tensors (detached copies).

    Parameters
    ----------
    models : sequence of ByteLM
        On one device, all with the same ``config``.

    Returns
    -------
    params : dict of str to torch.Tensor
    config : LMConfig
    """
    models = list(models) if not isinstance(models, ByteLM) else [models]
    if not models or not all(isinstance(m, ByteLM) for m in models):
        raise ValueError("models must be a non-empty sequence of ByteLM")
    config = models[0].config
    if any(m.config != config for m in models):
        raise ValueError("every model must have the same LMConfig to be stacked")
    params, _ = torch.func.stack_module_state(models)
    return {k: v.detach() for k, v in params.items()}, config


def unstack_model(params: Mapping[str, torch.Tensor], config: LMConfig, index: int) -> ByteLM:
    """Model ``index`` of stacked parameters as a :class:`ByteLM` (eval mode, on the parameters' device)."""
    model = ByteLM(config).to(next(iter(params.values())).device)
    model.load_state_dict({k: v[index].detach().clone() for k, v in params.items()})
    return model.eval()


def _check_mixtures(weights, streams: Mapping[str, np.ndarray]) -> np.ndarray:
    # (M, K) float64 rows on the simplex, from an (M, K) array or a sequence of {domain: weight} / None
    keys = list(streams)
    if isinstance(weights, Mapping):
        raise ValueError("weights must be an (M, K) array or a list of M {domain: weight} mappings, one per model; "
                         "wrap a single mapping in a list")
    if isinstance(weights, (list, tuple)) and weights and all(w is None or isinstance(w, Mapping) for w in weights):
        return np.stack([normalize_weights(w, streams) for w in weights])
    w = np.asarray(weights, dtype=np.float64) if not isinstance(weights, np.ndarray) else weights.astype(np.float64)
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] != len(keys):
        raise ValueError(f"weights must have shape (M, K) = (models, {len(keys)} domains in streams' order), "
                         f"got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0")
    total = w.sum(1)
    if np.any(total <= 0):
        raise ValueError(f"weights rows {np.flatnonzero(total <= 0)[:5].tolist()} sum to 0: give every model at "
                         "least one domain with a positive weight")
    return w / total[:, None]


def _init_stack(config: LMConfig, seeds: list[int], dev: torch.device) -> dict[str, torch.Tensor]:
    # model m starts from the weights new_model(config, seeds[m]) gives; one init per distinct seed
    first = {}
    for s in dict.fromkeys(seeds):
        torch.manual_seed(s)
        first[s] = ByteLM(config)
    params, _ = torch.func.stack_module_state([first[s] for s in seeds])
    return {k: v.detach().to(dev).contiguous().requires_grad_(True) for k, v in params.items()}


class _Rows:
    """Draws the training rows of M models per step and gathers them on the device.

    The streams live on the device once, concatenated; a row is ``context + 1`` bytes read
    cyclically from its domain's stream. ``exact``: model m's rows are those ``train_lm`` draws
    with ``seeds[m]`` (``batch_from_streams``' protocol, one numpy Generator per model; a few
    numpy calls per model and step). ``fast``: one ``Generator.random((B, 2))`` call per model and
    step, the domain by inverse CDF of the first uniform and the start as ``floor(u * size)`` of
    the second, vectorized over the models; the same distribution, other rows.
    """

    def __init__(self, streams: dict[str, np.ndarray], p: np.ndarray, seeds: list[int], batch_size: int,
                 context: int, sampler: str, dev: torch.device):
        arrays = list(streams.values())
        self.sizes = np.array([a.size for a in arrays], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.buf = torch.from_numpy(np.concatenate(arrays)).to(dev)
        self.off_t = torch.from_numpy(offsets).to(dev)
        self.size_t = torch.from_numpy(self.sizes).to(dev)
        self.ar = torch.arange(context + 1, device=dev)
        self.p, self.batch_size, self.sampler, self.dev = p, batch_size, sampler, dev
        self.rngs = [np.random.default_rng(s) for s in seeds]
        # train_lm normalizes its weights, then batch_from_streams normalizes them again: the same here,
        # so that rng.choice sees bit-identical probabilities
        self.p_exact = [row / row.sum() for row in p]
        cdf = np.cumsum(p, axis=1)
        self.cdf = cdf / cdf[:, -1:]

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """Domains and starts, two (M, B) int64 arrays."""
        if self.sampler == "exact":
            pairs = [_draw_rows(pm, self.sizes, self.batch_size, rng) for pm, rng in zip(self.p_exact, self.rngs)]
            return np.stack([d for d, _ in pairs]), np.stack([s for _, s in pairs])
        u = np.stack([rng.random((self.batch_size, 2)) for rng in self.rngs])               # (M, B, 2)
        dom = (u[:, :, :1] >= self.cdf[:, None, :-1]).sum(2).astype(np.int64)               # (M, B)
        start = np.minimum((u[:, :, 1] * self.sizes[dom]).astype(np.int64), self.sizes[dom] - 1)
        return dom, start

    def gather(self, dom: np.ndarray, start: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets on the device, (M, B, context) int64 each."""
        dom_t = torch.from_numpy(dom).to(self.dev)
        start_t = torch.from_numpy(start).to(self.dev)
        size = self.size_t[dom_t].unsqueeze(-1)
        rows = self.buf[self.off_t[dom_t].unsqueeze(-1) + (start_t.unsqueeze(-1) + self.ar) % size].long()
        return rows[..., :-1], rows[..., 1:]


def _clip_per_model(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    # clip_grad_norm_ for each model's slice of the stacked gradients; returns the (M,) norms before clipping
    m = params[0].shape[0]
    sq = torch.stack([p.grad.reshape(m, -1).pow(2).sum(1) for p in params]).sum(0)
    norm = sq.sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(coef.view(m, *([1] * (p.ndim - 1))))
    return norm


@dataclass
class BatchTrainResult:
    """M models trained together by :func:`train_lm_batch`, and their record.

    Attributes
    ----------
    params : dict of str to torch.Tensor
        Stacked parameters ``{name: (M, *shape)}`` (detached, on the training device).
    config : LMConfig
    history : list of dict
        Per logged step: ``step``, ``loss`` (list of M batch means, nats), ``bpb`` (the same in
        bits), ``lr``, ``tokens`` (cumulative bytes predicted per model), ``seconds`` (cumulative).
    tokens_per_second : float
        Training throughput over all M models (predicted bytes per second of the loop).
    tokens : int
        Bytes predicted in training by all models together (M x steps x batch_size x context).
    domains : list of str
    weights : numpy.ndarray, shape (M, K)
        Each model's sampling weights (normalized), columns in ``domains`` order.
    seeds : list of int
        Each model's seed.
    target_bpb : numpy.ndarray, shape (M,), optional
        Bits per byte of each model on the target stream, when one was given.
    eval_seconds : float
        Wall time of that evaluation.
    """

    params: dict
    config: LMConfig
    history: list[dict]
    tokens_per_second: float
    tokens: int
    domains: list[str]
    weights: np.ndarray
    seeds: list[int]
    target_bpb: np.ndarray | None = None
    eval_seconds: float = 0.0

    @property
    def n_models(self) -> int:
        return int(self.weights.shape[0])

    def model(self, index: int) -> ByteLM:
        """Model ``index`` as an ordinary :class:`ByteLM` (a copy, eval mode)."""
        index = check_int(index, "index", low=0, high=self.n_models - 1)
        return unstack_model(self.params, self.config, index)

    def models(self) -> list[ByteLM]:
        """All M models as :class:`ByteLM` copies."""
        return [self.model(i) for i in range(self.n_models)]


def train_lm_batch(streams: Mapping[str, np.ndarray], weights, config: LMConfig, steps: int, batch_size: int = 16,
                   lr: float = 3e-3, seed: int = 0, device: str = "auto", *, seeds=None, sampler: str = "exact",
                   target_stream: np.ndarray | None = None, eval_max_tokens: int | None = 65536,
                   eval_batch_size: int = 32, progress: bool = False, log_every: int | None = None,
                   cpu_threads: int | None = 1) -> BatchTrainResult:
    """Train M independent :class:`ByteLM`, one per mixture, in one batched computation.

    Model m is trained as ``train_lm(streams, weights[m], config, steps, batch_size, lr,
    seed=seeds[m])`` would train it (same initial weights, learning-rate schedule, AdamW,
    clipping at norm 1 per model, and with ``sampler="exact"`` the same batches), but the M
    forward and backward passes run as one (see :func:`batched_logits`) and one AdamW steps the
    stacked parameters. The results agree with one-at-a-time training up to floating-point
    rounding (batched vs. single matrix products).

    Parameters
    ----------
    streams : mapping of str to numpy.ndarray
        ``{domain: uint8 byte stream}`` (training split), K domains.
    weights : numpy.ndarray of shape (M, K), or sequence of M mappings
        Each model's sampling weights: rows in ``streams``' key order, or ``{domain: weight}``
        mappings (None in the list: natural token shares). Normalized per model.
    config : LMConfig
        Shape of every model (``dropout`` must be 0: proxies use none).
    steps, batch_size : int
        Optimizer steps and rows per step, per model.
    lr : float
        Peak learning rate (> 0), schedule :func:`lr_at`.
    seed : int
        Seed of every model when ``seeds`` is None (RegMix's common random numbers: the same
        initial weights for all mixtures, each model its own batch generator seeded alike).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    seeds : sequence of int, optional
        One seed per model (initial weights and batches), overriding ``seed``.
    sampler : {"exact", "fast"}
        ``"exact"``: model m reads the rows ``train_lm`` would with ``seeds[m]``. ``"fast"``:
        rows from one uniform draw per row and model, vectorized over the models (the same
        distribution; for hundreds of small models on a GPU, where the exact sampler's per-model
        numpy calls would dominate a step). Both are seeded and reproducible; under ``"fast"``
        model m's rows depend only on ``seeds[m]`` and ``weights[m]``, not on the other models.
    target_stream : numpy.ndarray, optional
        uint8 stream to score every model on after training (``target_bpb``).
    eval_max_tokens, eval_batch_size : int
        Cap on the target's predicted bytes (None: all) and windows per evaluation pass.
    progress : bool
        tqdm bar over the steps.
    log_every : int, optional
        Record the history every this many steps (default: about 50 records) and at the last step.
    cpu_threads : int, optional
        torch intra-op threads on CPU (default 1; None: leave torch's setting). Restored afterwards.

    Returns
    -------
    BatchTrainResult
    """
    streams = check_streams(streams)
    steps, batch_size, lr, seed = _check_training(config, steps, batch_size, lr, seed)
    if config.dropout:
        raise ValueError(f"train_lm_batch trains proxies without dropout; got config.dropout={config.dropout}")
    p = _check_mixtures(weights, streams)
    m = p.shape[0]
    if seeds is None:
        seeds = [seed] * m
    else:
        seeds = [check_int(s, "seeds[i]", low=0) for s in seeds]
        if len(seeds) != m:
            raise ValueError(f"seeds has {len(seeds)} entries for {m} models: pass one seed per mixture")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    log_every = max(1, steps // 50) if log_every is None else check_int(log_every, "log_every", low=1)
    if cpu_threads is not None:
        cpu_threads = check_int(cpu_threads, "cpu_threads", low=1)
    if target_stream is not None:
        (target_stream,) = check_streams({"target": target_stream}, name="target_stream").values()
    dev = resolve_device(device)
    keys = list(streams)

    history: list[dict] = []
    with _Deterministic(dev, cpu_threads):
        params = _init_stack(config, seeds, dev)
        plist = list(params.values())
        opt = torch.optim.AdamW(plist, lr=lr, betas=(0.9, 0.95), weight_decay=0.0,
                                **({"fused": True} if dev.type == "cuda" else {"foreach": True}))
        rows = _Rows(streams, p, seeds, batch_size, config.context, sampler, dev)
        t0 = time.perf_counter()
        tokens = 0
        for step in progress_steps(steps, f"{m} proxy LMs", progress):
            x, y = rows.gather(*rows.draw())
            losses = batched_token_losses(params, config, x, y).mean(dim=(1, 2))   # (M,)
            rate = lr_at(step, steps, lr)
            for g in opt.param_groups:
                g["lr"] = rate
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()        # model m's parameters get the gradient of its own mean loss
            _clip_per_model(plist, 1.0)
            opt.step()
            tokens += batch_size * config.context
            if (step + 1) % log_every == 0 or step == steps - 1:
                lv = losses.detach().double().cpu().numpy()
                history.append({"step": step + 1, "loss": lv.tolist(), "bpb": (lv / _LN2).tolist(), "lr": rate,
                                "tokens": tokens, "seconds": time.perf_counter() - t0})
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    params = {k: v.detach() for k, v in params.items()}
    res = BatchTrainResult(params=params, config=config, history=history,
                           tokens_per_second=m * tokens / max(seconds, 1e-9), tokens=m * tokens, domains=keys,
                           weights=p, seeds=list(seeds))
    if target_stream is not None:
        t1 = time.perf_counter()
        res.target_bpb = evaluate_bpb_batch(res, target_stream, batch_size=eval_batch_size,
                                            max_tokens=eval_max_tokens, device=device, cpu_threads=cpu_threads)
        res.eval_seconds = time.perf_counter() - t1
    return res


@torch.no_grad()
def _stream_bpb_batch(params, config: LMConfig, stream: np.ndarray, batch_size: int, max_tokens: int | None,
                      dev: torch.device) -> np.ndarray:
    ctx = config.context
    m = next(iter(params.values())).shape[0]
    wins = _windows(stream.size, ctx, max_tokens)
    total = torch.zeros(m, dtype=torch.float64, device=dev)
    count = 0
    s = torch.from_numpy(np.ascontiguousarray(stream, dtype=np.uint8))
    full = [w[0] for w in wins if w[1] == ctx]
    groups = [(full[i:i + batch_size], ctx) for i in range(0, len(full), batch_size)]
    groups += [([start], length) for start, length in wins if length < ctx]   # the short tail window, if any
    for starts, length in groups:
        rows = s[torch.tensor(starts)[:, None] + torch.arange(length + 1)[None, :]].long().to(dev)
        rows = rows.unsqueeze(0).expand(m, -1, -1)
        losses = batched_token_losses(params, config, rows[..., :-1], rows[..., 1:])
        total += losses.double().sum(dim=(1, 2))
        count += losses[0].numel()
    return (total / count / _LN2).cpu().numpy()


def evaluate_bpb_batch(models, stream_or_streams, batch_size: int = 32, max_tokens: int | None = None,
                       device: str = "auto", cpu_threads: int | None = 1) -> np.ndarray | dict[str, np.ndarray]:
    """Bits per byte of M models on one stream (or each of ``{name: stream}``), in batched passes.

    Every model reads the same windows as :func:`evaluate_bpb` (so model m's value equals
    ``evaluate_bpb(model_m, ...)`` up to rounding); the M models run as one batched forward.

    Parameters
    ----------
    models : BatchTrainResult or sequence of ByteLM
        The M models (a sequence must share one ``LMConfig``).
    stream_or_streams : numpy.ndarray or mapping of str to numpy.ndarray
        uint8 byte stream(s) of >= 2 bytes.
    batch_size : int
        Windows per forward pass (each pass holds M x batch_size windows).
    max_tokens : int, optional
        At most about this many predicted bytes per stream (evenly spaced windows); None: all.
    device : str
    cpu_threads : int, optional
        torch intra-op threads on CPU during the evaluation (None: leave torch's setting).

    Returns
    -------
    numpy.ndarray of shape (M,), or dict of str to such arrays
    """
    if isinstance(models, BatchTrainResult):
        params, config = models.params, models.config
    else:
        params, config = stack_models(models)
    batch_size = check_int(batch_size, "batch_size", low=1)
    if max_tokens is not None:
        max_tokens = check_int(max_tokens, "max_tokens", low=1)
    single = not isinstance(stream_or_streams, Mapping)
    streams = check_streams({"stream": stream_or_streams} if single else stream_or_streams)
    dev = resolve_device(device)
    params = {k: v.detach().to(dev) for k, v in params.items()}
    with _Deterministic(dev, cpu_threads):
        out = {k: _stream_bpb_batch(params, config, s, batch_size, max_tokens, dev) for k, s in streams.items()}
    return out["stream"] if single else out
