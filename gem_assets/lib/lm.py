"""Proxy language models: a compact causal transformer over bytes (DESIGN.md section 5).

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
separated by a separator byte, see ``lib/mixture.py``, so the wrap joins two documents as the
stream does everywhere else).

Training
--------
AdamW (betas 0.9/0.95, no weight decay), linear warm-up over the first 5% of steps then cosine
decay to 10% of ``lr``, gradient clipping at norm 1. Seeded: ``torch.manual_seed(seed)`` fixes
the initial weights and a ``numpy.random.Generator(seed)`` the batches; on CPU
``torch.use_deterministic_algorithms`` is switched on for the duration (and restored), so the
same seed, data and thread count give the same weights and losses.

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

from ._checks import check_float, check_int
from ._checks import resolve_device as _resolve_device

__all__ = ["LMConfig", "ByteLM", "resolve_device", "batch_from_streams", "TrainResult", "train_lm",
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
                             "build streams with lib.mixture.texts_to_streams")
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


def batch_from_streams(streams: Mapping[str, np.ndarray], weights: Mapping[str, float] | None, batch_size: int,
                       context: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw a training batch of byte windows from domain streams.

    Parameters
    ----------
    streams : mapping of str to numpy.ndarray
        ``{domain: uint8 byte stream}``; read cyclically.
    weights : mapping of str to float or None
        Probability of each domain per row (normalized; None: natural token shares).
    batch_size, context : int
        Rows and bytes per row.
    rng : numpy.random.Generator
        Source of the domains and start positions.

    Returns
    -------
    x, y : numpy.ndarray of int64, shape (batch_size, context)
        Inputs and next-byte targets (``y[:, t] = x[:, t + 1]`` inside a row).
    domain_idx : numpy.ndarray of int64, shape (batch_size,)
        Position of each row's domain in ``list(streams)``.
    """
    streams = check_streams(streams)
    batch_size = check_int(batch_size, "batch_size", low=1)
    context = check_int(context, "context", low=1)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    p = normalize_weights(weights, streams)
    keys = list(streams)
    dom = rng.choice(len(keys), size=batch_size, p=p).astype(np.int64)
    rows = np.empty((batch_size, context + 1), dtype=np.int64)
    offs = np.arange(context + 1)
    for k in np.unique(dom):
        s = streams[keys[k]]
        sel = np.flatnonzero(dom == k)
        start = rng.integers(0, s.size, size=sel.size)
        rows[sel] = s[(start[:, None] + offs[None, :]) % s.size]
    return rows[:, :-1], rows[:, 1:], dom


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
    their GEMMs gain little from intra-op threads and lose a lot when another process holds a
    core: on the shared 2-core machine the default proxy trained at 13.9k bytes/s on 1 thread
    and 3.5k on 2 (benchmarks/proxy.py, load average 5.2; an earlier ad-hoc run at load ~2 gave
    34k and 1.8k-4.5k). ``threads=None`` leaves torch's setting.
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
    from tqdm.auto import tqdm

    history: list[dict] = []
    with _Deterministic(dev, cpu_threads):
        model, opt = new_model(config, seed, dev)
        model.train()
        t0 = time.perf_counter()
        tokens = 0
        for step in tqdm(range(steps), desc="proxy LM", unit="step", disable=not progress):
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
