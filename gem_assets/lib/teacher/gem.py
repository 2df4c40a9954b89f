"""GEM teacher: a von Mises-Fisher mixture on the unit sphere with a mixing-balance regularizer,
fitted by a monotone Minorize-Maximize (MM) algorithm.

Objective (maximized over soft assignments Q, rows on the simplex, and Theta = {mu_k, kappa_k}):

    J(Q, Theta) = sum_ik Q_ik s_ik  +  sum_i H(Q_i)  +  gamma * N * H(rho),
    s_ik = log C_d(kappa_k) + kappa_k mu_k^T x_i,   rho = (1/N) sum_i Q_i.

* E-step: Q = argmax_Q J(Q, Theta) is strictly concave. Its stationarity conditions give
  Q_ik ∝ exp(s_ik) rho_k^(-gamma); we solve it through the K-dimensional convex dual
      D(v) = sum_i logsumexp_k(s_ik + v_k) + gamma N sum_k exp(-1 - v_k / gamma),
  whose minimizer gives Q = softmax(s + v) and rho = exp(-1 - v / gamma) (Newton with a
  backtracking line search; the damped fixed point on log rho with damping 1 / (1 + gamma) is the
  fallback). gamma = 0 is the plain softmax: a vMF mixture with a uniform, *decoupled* prior.
* M-step: with R_k = sum_i Q_ik x_i and n_k = sum_i Q_ik, mu_k = R_k / ||R_k|| and kappa_k solves
  A_d(kappa) = ||R_k|| / n_k (the exact MLE), which maximizes J(Q, .) for fixed Q.
* Monotonicity: G(Theta) = max_Q J(Q, Theta); J(Q^t, .) minorizes G and touches it at Theta^t, so
  G(Theta^{t+1}) >= J(Q^t, Theta^{t+1}) >= J(Q^t, Theta^t) = G(Theta^t). A guard checks every step;
  an iteration that would lower the recorded objective (float32 round-off, an unconverged inner
  solve) is rolled back and ends the fit, so ``history_`` never decreases.

The balance scale: ``balance`` is dimensionless. With ``balance_scale="evidence"`` (default) the
regularizer weight is gamma = balance * median_i (s_i(1) - s_i(2)) measured once at the initial
parameters: the typical margin by which a document prefers its best domain over the runner-up. One
value then means roughly the same across corpora, embedders and K (see docs/method.md). With
``balance_scale="none"`` gamma = balance.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from gem_assets.lib.io import storage
from gem_assets.lib.teacher import vmf
from gem_assets.lib.util.checks import as_matrix, check_float, check_int, make_rng, normalize_rows, resolve_device, row_norms
from gem_assets.lib.util.metrics import balance_stats
from gem_assets.lib.teacher.seeding import kmeans_plusplus

__all__ = ["GEM", "DEFAULT_BALANCE", "balanced_e_step", "objective_terms", "vmf_m_step", "vmf_scores"]

DEFAULT_BALANCE = 3.0
_F64 = torch.float64
_EXP_FLOOR = {torch.float32: -80.0, torch.float64: -700.0}


# --------------------------------------------------------------------------------------------
# the E-step, as a plain function (tested on its own for optimality)
# --------------------------------------------------------------------------------------------
def _row_chunks(S: torch.Tensor):
    """Row ranges of ~4 MB of S on CPU, so that the passes over one chunk run from cache; one range on GPU.

    (1 MB chunks were 15% faster on a quiet machine but launch 4x more small parallel ops, each of
    which stalls when another process competes for the cores.)
    """
    N, K = S.shape
    step = N if S.device.type != "cpu" else max(1, (1 << 22) // (K * S.element_size()))
    return [(a, min(a + step, N)) for a in range(0, N, step)]


def _argmax_rows(q: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """argmax_k q_ik of each row, (n,) int64 (the first index among ties), written into ``out`` if given.

    On CPU through numpy: torch's row argmax (and ``max`` with indices) ran ~4x slower than
    numpy's SIMD argmax over rows of K = 64 float32 (19.5 vs 4.9 ms per 100,000 rows, one thread,
    2026-11-27; torch's ``amax`` alone takes 1.4 ms). Elsewhere (CUDA) torch's argmax.
    """
    if q.device.type != "cpu" or q.dtype not in (torch.float32, torch.float64) or q.requires_grad:
        idx = q.argmax(1)
        return idx if out is None else out.copy_(idx)
    if out is None:
        out = torch.empty(q.shape[0], dtype=torch.int64)
    np.argmax(q.numpy(), axis=1, out=out.numpy())
    return out


def _softmax_rows_(q: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """In place: logits q (n, K) -> softmax rows; returns log Z (n, 1) = max + log sum exp.

    With ``labels`` ((n,) int64) the row argmax of the logits is written there first.
    """
    if labels is not None:
        _argmax_rows(q, labels)
    m = q.amax(1, keepdim=True)
    # clamp: exp of very negative arguments takes a slow path (4x slower here); below the floor a
    # term is < 2e-35 of its row (float32) or < 1e-304 (float64) and cannot change any sum
    q.sub_(m).clamp_(min=_EXP_FLOOR[q.dtype]).exp_()
    z = q.sum(1, keepdim=True)
    q.div_(z)                                                      # Q = exp(logit - max) / sum
    return m + z.log()


def _softmax(S: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None, *, final: bool = False,
             out: torch.Tensor | None = None):
    """Q = softmax(S + bias + v) row-wise, log Z (N,) and rho_hat = mean_i Q_i (K,) float64.

    Processed in row chunks: add, max, exp, sum and divide run on a cache-resident block. With
    ``final`` the same pass also returns sum_ik Q_ik S_ik (without the bias) and the hard labels
    argmax_k Q_ik, while each chunk is still in cache instead of in a pass of their own (whole
    iterations measured no faster for it, docs/benchmarks.md; it saves a read of Q and S). Each chunk's sum is taken in the data's dtype (pairwise, ~1e-7 relative in
    float32) and the chunks are added in float64: a float64 sum over float32 elements converts each
    one and is 10x slower here. That sum only splits J between its log-likelihood and entropy terms;
    J itself does not depend on it (see ``_terms``).
    """
    N, K = S.shape
    Q = torch.empty_like(S) if out is None else out                # (N, K)
    log_z = torch.empty(N, dtype=S.dtype, device=S.device)         # (N,)
    col = torch.zeros(K, dtype=_F64, device=S.device)              # (K,) column sums of Q
    off = (v if bias is None else v + bias).to(S.dtype)            # (K,) per-domain offset
    chunks = _row_chunks(S)
    qs, labels = 0.0, (torch.empty(N, dtype=torch.int64, device=S.device) if final else None)
    tmp = torch.empty_like(S[: chunks[0][1]]) if final else None  # one product buffer per call
    for a, b in chunks:
        q = Q[a:b]
        torch.add(S[a:b], off, out=q)                              # logits
        log_z[a:b] = _softmax_rows_(q, labels[a:b] if final else None).squeeze(1)
        col += q.sum(0).to(_F64)
        if final:
            qs += _sum_of_products(q, S[a:b], tmp)
    if final:
        return Q, log_z, col / N, qs, labels
    return Q, log_z, col / N


def _sum_of_products(q: torch.Tensor, s: torch.Tensor, tmp: torch.Tensor) -> float:
    """sum_ik q_ik s_ik of one chunk, the products written into the reusable buffer ``tmp``."""
    return float(torch.mul(q, s, out=tmp[: q.shape[0]]).sum())


def _final_pass(Q: torch.Tensor, S: torch.Tensor):
    """sum_ik Q_ik S_ik and the hard labels argmax_k Q_ik, in one chunked pass (see ``_softmax``)."""
    qs, chunks = 0.0, _row_chunks(S)
    labels = torch.empty(Q.shape[0], dtype=torch.int64, device=Q.device)
    tmp = torch.empty_like(S[: chunks[0][1]])
    for a, b in chunks:
        q = Q[a:b]
        qs += _sum_of_products(q, S[a:b], tmp)
        _argmax_rows(q, labels[a:b])
    return qs, labels


def _terms(qs: float, log_z_sum: float, v: torch.Tensor, rho_hat: torch.Tensor, gamma: float, shift: float,
           N: int) -> dict:
    """J and its terms from the E-step's by-products (no pass over the data).

    ``qs`` = sum_ik Q_ik s_ik of the shifted scores. With log Q_ik = s_ik + v_k - log Z_i:
    sum_i H(Q_i) = sum_i log Z_i - sum_ik Q_ik s_ik - N rho_hat.v, so qs cancels in
    J = sum_i log Z_i + N shift - N rho_hat.v + gamma N H(rho_hat): only the split into terms uses it.
    """
    loglik = qs + N * shift
    ent = log_z_sum - qs - N * float(rho_hat @ v)
    h_rho = float(-torch.special.xlogy(rho_hat, rho_hat).sum())
    bal = gamma * N * h_rho
    return {"objective": loglik + ent + bal, "loglik": loglik, "assignment_entropy": ent,
            "balance_term": bal, "balance_entropy": h_rho}


def _dual_stats(log_z_sum: float, rho_hat: torch.Tensor, v: torch.Tensor, gamma: float, N: int):
    """Dual value D(v), relative KKT residual and duality gap at the potentials v."""
    rho_v = torch.exp(-1.0 - v / gamma)                                   # shares the potentials ask for
    D = log_z_sum + gamma * N * float(rho_v.sum())
    residual = float(((rho_hat - rho_v).abs() / rho_v).max())
    # duality gap gamma N [sum rho_hat log(rho_hat / rho_v) - sum rho_hat + sum rho_v] >= 0
    gap = gamma * N * float((torch.special.xlogy(rho_hat, rho_hat / rho_v) - rho_hat + rho_v).sum())
    return D, residual, gap


def balanced_e_step(S: torch.Tensor, gamma: float, v0=None, *, max_steps: int = 100, tol: float = 1e-8,
                    gap_tol: float = 0.0, bias: torch.Tensor | None = None, new_q=None):
    """Maximize sum_ik Q_ik S_ik + sum_i H(Q_i) + gamma N H(mean_i Q_i) over row-stochastic Q.

    Parameters
    ----------
    S : torch.Tensor, shape (N, K)
        Scores s_ik (log-densities of each document under each domain).
    gamma : float
        Weight of the balance entropy; 0 gives Q = softmax(S).
    v0 : torch.Tensor of float64, shape (K,), optional
        Warm start of the dual potentials (from the previous MM iteration).
    max_steps : int
        Newton steps at most (the fixed-point fallback gets 4 x max_steps more).
    tol : float
        Stop when max_k |mean_i Q_ik - rho_k(v)| / rho_k(v) <= tol (the KKT residual).
    gap_tol : float, default 0
        Also stop when the duality gap D(v) - J(Q(v)) = gamma N KL(rho_hat || rho(v)) (generalized KL),
        which bounds how far J(Q) is below the E-step's optimum, is at most ``gap_tol`` (in nats).
    bias : torch.Tensor of float64, shape (K,), optional
        A per-domain term of the scores kept apart: the scores are S + bias (saves a pass over S).
    new_q : callable, optional
        Returns an (N, K) tensor of S's dtype to write each evaluation's Q into (a buffer that no
        live result uses); default: a new tensor each time.

    Returns
    -------
    Q : (N, K) tensor, dtype of S
    v : (K,) float64 dual potentials; Q = softmax(S + bias + v)
    info : dict with ``steps``, ``residual``, ``gap``, ``method``, ``log_z`` ((N,)), ``rho_hat``
        ((K,) float64), ``qs`` (sum_ik Q_ik S_ik, without the bias) and ``labels`` ((N,) argmax_k Q_ik).
    """
    N, K = S.shape

    calls = [0]

    def evaluate(v):
        # the first evaluation (the warm start) is often the last one: it also computes sum Q S and
        # the labels while its chunks are in cache; after later ones they take a pass of their own
        calls[0] += 1
        out = None if new_q is None else new_q()
        if calls[0] == 1:
            Q, log_z, rho_hat, qs, labels = _softmax(S, v, bias, final=True, out=out)
        else:
            (Q, log_z, rho_hat), qs, labels = _softmax(S, v, bias, out=out), None, None
        return ((Q, log_z, qs, labels), rho_hat) + _dual_stats(float(log_z.sum(dtype=_F64)), rho_hat, v, gamma, N)

    (Q, log_z, qs, labels), v, info = _solve_balance(evaluate, lambda p: (p[0].T @ p[0]).to(_F64), gamma, N, K,
                                                     v0, max_steps, tol, gap_tol, S.device)
    if labels is None:
        qs, labels = _final_pass(Q, S)
    info.update(log_z=log_z, qs=qs, labels=labels)
    return Q, v, info


def _solve_balance(evaluate, gram, gamma, N, K, v0, max_steps, tol, gap_tol, device):
    """The balanced E-step in the dual, for any way of evaluating it.

    ``evaluate(v)`` returns ``(payload, rho_hat, D, residual, gap)`` at the potentials v, and
    ``gram(payload)`` the (K, K) float64 matrix sum_i Q_i Q_i^T of that evaluation (Newton's Hessian).
    Returns ``(payload, v, info)``.
    """
    if gamma == 0.0:
        v = torch.zeros(K, dtype=_F64, device=device)
        payload, rho_hat, *_ = evaluate(v)
        return payload, v, {"steps": 0, "residual": 0.0, "gap": 0.0, "method": "softmax", "rho_hat": rho_hat}

    def done(residual, gap):
        return residual <= tol or gap <= gap_tol

    solve = lambda v, give_up: _solve_dual(evaluate, gram, gamma, N, v, max_steps, done, give_up)  # noqa: E731
    cold = torch.full((K,), -gamma * (1.0 + math.log(1.0 / K)), dtype=_F64, device=device)  # rho = 1/K
    if v0 is None:
        return solve(cold, None)
    # warm start first; when the parameters moved far, the old potentials can sit where rows are
    # nearly one-hot and Newton crawls: then restart from equal shares and keep the better answer
    warm = solve(v0.clone(), 8)
    if done(warm[2]["residual"], warm[2]["gap"]):
        return warm
    restart = solve(cold, None)
    restart[2]["steps"] += warm[2]["steps"]
    return restart if restart[2]["residual"] < warm[2]["residual"] else warm


def _solve_dual(evaluate, gram, gamma, N, v, max_steps, done, give_up_after=None):
    """Newton on the dual D(v) from ``v`` (Armijo backtracking), damped fixed point as the fallback.

    With ``give_up_after`` (warm starts), stop early when that many steps have not cut the residual
    tenfold: the caller then restarts from equal shares.
    """
    payload, rho_hat, D, residual, gap = evaluate(v)
    method, steps, first = "newton", 0, residual

    def result(m):
        return payload, v, {"steps": steps, "residual": residual, "gap": gap, "method": m, "rho_hat": rho_hat}

    while not done(residual, gap) and steps < max_steps:
        if give_up_after is not None and steps >= give_up_after and residual > 0.1 * first:
            return result("stalled")
        steps += 1
        rho_v = torch.exp(-1.0 - v / gamma)
        g = N * (rho_hat - rho_v)                                # dD/dv
        # Hessian: sum_i (diag Q_i - Q_i Q_i^T) + (N / gamma) diag(rho_v), a (K, K) PD matrix
        H = torch.diag(N * rho_hat + (N / gamma) * rho_v) - gram(payload)
        try:
            step = -torch.linalg.solve(H, g)
        except RuntimeError:  # singular in floating point: fall back
            method = "fixed_point"
            break
        slope = float(g @ step)
        if not slope < 0:
            method = "fixed_point"
            break
        t, accepted = 1.0, False
        for _ in range(30):
            # backtracking: accept a sufficient decrease of the convex dual (Armijo) or, where float32
            # round-off in D hides it near the optimum, a decrease of the KKT residual
            trial = evaluate(v + t * step)
            if trial[2] <= D + 1e-4 * t * slope or trial[3] < residual:
                accepted = True
                break
            t *= 0.5
        if not accepted:  # no progress in floating point: the fixed point takes over
            method = "fixed_point"
            break
        v = v + t * step
        payload, rho_hat, D, residual, gap = trial
    if method == "fixed_point":
        # damped fixed point on u = log rho: u <- L(u) / (1 + gamma), L_k = log mean_i exp(s_ik - log Z_i)
        for _ in range(4 * max_steps):
            if done(residual, gap):
                break
            steps += 1
            u = -1.0 - v / gamma                                   # current log rho
            L = torch.log(rho_hat) + gamma * u
            v = -gamma * (1.0 + L / (1.0 + gamma))
            payload, rho_hat, D, residual, gap = evaluate(v)
    return result(method)


def objective_terms(Q: torch.Tensor, S: torch.Tensor, gamma: float, shift: float = 0.0) -> dict:
    """J(Q, Theta) and its three terms for scores S + shift (float64 reductions).

    Returns a dict with ``loglik`` = sum Q s, ``assignment_entropy`` = sum_i H(Q_i),
    ``balance_term`` = gamma N H(rho), ``balance_entropy`` = H(rho) and ``objective`` (their sum).
    """
    N = Q.shape[0]
    Q64 = Q.to(_F64)
    loglik = float((Q64 * S.to(_F64)).sum()) + N * shift
    ent = float(-torch.special.xlogy(Q64, Q64).sum())
    rho = Q64.sum(0) / N
    h_rho = float(-torch.special.xlogy(rho, rho).sum())
    bal = gamma * N * h_rho
    return {"objective": loglik + ent + bal, "loglik": loglik, "assignment_entropy": ent,
            "balance_term": bal, "balance_entropy": h_rho}


def _score_params(mu: torch.Tensor, kappa: torch.Tensor, dim: int, dtype: torch.dtype):
    """The scores as one GEMM plus a per-domain bias: s_ik - shift = x_i . W_k + bias_k.

    W_k = kappa_k mu_k (K, d) in ``dtype``; bias_k = log C_d(kappa_k) - shift (K,) float64; the shift
    max_k log C_d(kappa_k) changes neither Q nor the E-step and is added back, in float64, to the
    log-likelihood (so float32 scores keep their precision). Folding kappa into W saves a pass over
    the (N, K) scores; the bias is added inside the softmax pass.
    """
    log_c = vmf.log_normalizer(kappa.cpu().numpy(), dim)                 # (K,) float64
    shift = float(log_c.max())
    # stored (d, K) contiguous (as fast as the transposed view of W: benchmarks/gemm_layout.py)
    WT = (mu.to(_F64) * kappa.to(_F64)[:, None]).T.contiguous().to(dtype)   # (d, K)
    bias = torch.as_tensor(log_c - shift, dtype=_F64, device=mu.device)     # (K,)
    return WT, bias, shift


def _moments(X: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """R = Q^T X, (K, d) float64, for X (n, d) and Q (n, K) in one dtype.

    Computed as (X^T Q)^T: the same GEMM with a (d, K) output, which torch (MKL) ran 1.36x (K = 64)
    and 1.55x (K = 24) faster than Q^T X on 2 threads at n = 100,000 in isolation
    (benchmarks/gemm_layout.py; OpenBLAS runs both alike).
    """
    return (X.T @ Q).T.to(_F64)


def vmf_scores(X, mu, kappa):
    """Scores s_ik - shift, shape (N, K) in X's dtype, and the scalar shift (float64).

    s_ik = log C_d(kappa_k) + kappa_k mu_k^T x_i. The common shift max_k log C_d(kappa_k) changes
    neither Q nor the E-step; it is taken out so that float32 scores keep their precision and is
    added back, in float64, to the log-likelihood.
    """
    WT, bias, shift = _score_params(mu, kappa, X.shape[1], X.dtype)
    return (X @ WT).add_(bias.to(X.dtype)[None, :]), shift


def _top2_margins(S: torch.Tensor) -> torch.Tensor:
    """s_i(1) - s_i(2), the gap between each row's best and second-best score, (n,) float64."""
    top2 = torch.topk(S, 2, dim=1).values.to(_F64)
    return top2[:, 0] - top2[:, 1]


def evidence_margin(S: torch.Tensor) -> float:
    """Median over documents of s_i(1) - s_i(2), the gap between a document's best and second-best domain.

    The scale of "evidence" a typical document carries for its domain, in nats: the unit in which
    ``balance`` is expressed under ``balance_scale="evidence"``. The median ignores outlying domains
    (e.g. a near-singleton with a huge kappa); a degenerate zero margin falls back to 1.
    """
    return _median_margin(_top2_margins(S))


def _median_margin(margins: torch.Tensor) -> float:
    margin = float(torch.median(margins))
    return margin if margin > 0 and math.isfinite(margin) else 1.0


def vmf_m_step(R: torch.Tensor, n: torch.Tensor, mu_old: torch.Tensor, kappa_old: torch.Tensor, dim: int):
    """Maximize sum_ik Q_ik log f_k(x_i) over (mu, kappa) given R = Q^T X (K, d) and n = Q.sum(0) (K,).

    mu_k = R_k / ||R_k||, kappa_k = A_d^{-1}(||R_k|| / n_k) (exact MLE, clipped to [1e-3, 1e6]).
    A domain with no mass (n_k ~ 0) keeps its previous parameters: any value maximizes its zero
    contribution, and keeping them is the honest choice (no silent re-seeding). Returns
    ``(mu, kappa, n_empty)``.
    """
    norm = torch.linalg.vector_norm(R, dim=1)                                # (K,) float64
    alive = (n > 1e-10) & (norm > 1e-300)
    mu = torch.where(alive[:, None], R / norm.clamp(min=1e-300)[:, None], mu_old)
    rbar = (norm / n.clamp(min=1e-300)).clamp(0.0, 1.0)
    kappa_new = torch.as_tensor(vmf.kappa_mle(rbar.cpu().numpy(), dim), dtype=_F64, device=R.device)
    kappa = torch.where(alive, kappa_new, kappa_old)
    return mu, kappa, int((~alive).sum())


# --------------------------------------------------------------------------------------------
# two ways to run an MM iteration over the data: (N, K) matrices in memory, or streamed in chunks
# --------------------------------------------------------------------------------------------
class _Resident:
    """Scores and Q held as (N, K) matrices: the two GEMMs of an MM iteration and nothing more."""

    streamed = False

    def __init__(self, X: torch.Tensor):
        self.X = X
        self._S = None                                                    # (N, K) scores, reused
        self._pool: list[torch.Tensor] = []                               # (N, K) buffers for Q

    def _new_q(self) -> torch.Tensor:
        """An (N, K) buffer for an E-step evaluation's Q: one of the pool's that nothing references
        any more, else a new one. The pool keeps at most 4, the most an E-step holds at once (the warm
        start's result while the restart holds its current and trial evaluations and the one before).

        Reuse spares a fresh allocation per evaluation: where glibc's mmap threshold is low (e.g.
        ``allocator.fix_mmap_threshold``'s 1 MiB) every one is a new mapping whose page faults cost
        ~14 ms per 100,000 x 64 float32 here, against ~2 ms to fill a reused buffer.
        "Nothing references it" is CPython's reference count: the pool's list, the loop's name and
        ``getrefcount``'s argument; any other holder, a view included, raises it.
        """
        for buf in self._pool:
            if sys.getrefcount(buf) <= 3:
                return buf
        buf = torch.empty(self.X.shape[0], self._S.shape[1], dtype=self.X.dtype, device=self.X.device)
        if len(self._pool) < 4:
            self._pool.append(buf)
        return buf

    def nearest(self, mu: torch.Tensor) -> torch.Tensor:
        return _argmax_rows(self.X @ mu.to(self.X.dtype).T)               # (N,)

    def scores(self, mu, kappa) -> dict:
        """S = X W^T (N, K) into one buffer kept for the whole fit (the previous iteration's scores are
        dead by then), in row blocks of 2,048 on CPU; the bias is kept apart."""
        X = self.X
        WT, bias, shift = _score_params(mu, kappa, X.shape[1], X.dtype)
        if self._S is None:
            self._S = torch.empty(X.shape[0], WT.shape[1], dtype=X.dtype, device=X.device)
        S, step = self._S, (2048 if X.device.type == "cpu" else X.shape[0])
        for a in range(0, X.shape[0], step):
            torch.mm(X[a:a + step], WT, out=S[a:a + step])
        return {"S": S, "bias": bias, "shift": shift}

    def margin(self, h) -> float:
        return evidence_margin(h["S"] + h["bias"].to(h["S"].dtype))

    def e_step(self, h, gamma, v0, max_steps, tol, gap_tol) -> dict:
        S, bias, N = h["S"], h["bias"], self.X.shape[0]
        Q, v, info = balanced_e_step(S, gamma, v0, max_steps=max_steps, tol=tol, gap_tol=gap_tol, bias=bias,
                                     new_q=self._new_q)
        qs, labels = info.pop("qs"), info.pop("labels")                  # sum Q S without the bias
        rho_hat = info["rho_hat"]
        qs += N * float(rho_hat @ bias)
        terms = _terms(qs, float(info.pop("log_z").sum(dtype=_F64)), v, rho_hat, gamma, h["shift"], N)
        return {"Q": Q, "v": v, "info": info, "terms": terms, "labels": labels, "rho": rho_hat}

    def moments(self, state) -> torch.Tensor:
        return _moments(self.X, state.pop("Q"))     # R = Q^T X, (K, d) GEMM; Q's buffer is free again


class _Streamed:
    """Nothing of size N x K is kept: each pass recomputes the scores of one chunk of rows at a time.

    Memory is X plus O(chunk_size * K); the cost is one scores GEMM per E-step evaluation (instead of
    one per MM iteration) plus the Q^T X GEMM, fused with the final pass.
    """

    streamed = True

    def __init__(self, X: torch.Tensor, chunk_size: int):
        self.X, self.chunk = X, chunk_size
        self._bufs = None            # (chunk, K) scores, Q and products of one chunk, reused by every pass

    def _buffers(self, K: int):
        if self._bufs is None:                                         # K is fixed for the engine's fit
            n = min(self.chunk, self.X.shape[0])
            self._bufs = tuple(torch.empty(n, K, dtype=self.X.dtype, device=self.X.device) for _ in range(3))
        return self._bufs

    def _chunks(self):
        N = self.X.shape[0]
        return [(a, min(a + self.chunk, N)) for a in range(0, N, self.chunk)]

    def nearest(self, mu: torch.Tensor) -> torch.Tensor:
        M = mu.to(self.X.dtype).T
        return torch.cat([_argmax_rows(self.X[a:b] @ M) for a, b in self._chunks()])

    def scores(self, mu, kappa) -> dict:
        WT, bias, shift = _score_params(mu, kappa, self.X.shape[1], self.X.dtype)
        return {"WT": WT, "bias": bias, "shift": shift}

    def margin(self, h) -> float:
        WT, b = h["WT"], h["bias"].to(self.X.dtype)
        return _median_margin(torch.cat([_top2_margins((self.X[a:c] @ WT).add_(b)) for a, c in self._chunks()]))

    def _pass(self, h, v, *, gram: bool = False, final: bool = False) -> dict:
        """Softmax statistics at potentials v: log Z sum, column sums, and optionally
        sum_i Q_i Q_i^T (gram) or sum Q s, labels and R = Q^T X (final)."""
        X, WT = self.X, h["WT"]
        N, d = X.shape
        K = WT.shape[1]
        off = (v + h["bias"]).to(X.dtype)
        out = {"log_z": 0.0, "col": torch.zeros(K, dtype=_F64, device=X.device)}
        if gram:
            out["gram"] = torch.zeros(K, K, dtype=_F64, device=X.device)
        if final:
            out.update(qs=0.0, labels=torch.empty(N, dtype=torch.int64, device=X.device),
                       R=torch.zeros(K, d, dtype=_F64, device=X.device))
        s_buf, q_buf, tmp = self._buffers(K)
        for a, b in self._chunks():
            s = torch.mm(X[a:b], WT, out=s_buf[: b - a])                  # (n, K) scores of the chunk
            q = torch.add(s, off, out=q_buf[: b - a])
            out["log_z"] += float(_softmax_rows_(q, out["labels"][a:b] if final else None).sum(dtype=_F64))
            out["col"] += q.sum(0).to(_F64)
            if gram:
                out["gram"] += (q.T @ q).to(_F64)
            if final:
                out["qs"] += _sum_of_products(q, s, tmp)             # see _softmax
                out["R"] += _moments(X[a:b], q)
        return out

    def e_step(self, h, gamma, v0, max_steps, tol, gap_tol) -> dict:
        N, K = self.X.shape[0], h["WT"].shape[1]

        def evaluate(v):
            p = self._pass(h, v, gram=gamma > 0)
            rho_hat = p["col"] / N
            return (p.get("gram"), rho_hat) + (_dual_stats(p["log_z"], rho_hat, v, gamma, N) if gamma > 0
                                               else (0.0, 0.0, 0.0))

        _, v, info = _solve_balance(evaluate, lambda g: g, gamma, N, K, v0, max_steps, tol, gap_tol,
                                    self.X.device)
        fin = self._pass(h, v, final=True)
        rho_hat = fin["col"] / N
        qs = fin["qs"] + N * float(rho_hat @ h["bias"])
        terms = _terms(qs, fin["log_z"], v, rho_hat, gamma, h["shift"], N)
        info["rho_hat"] = rho_hat
        return {"v": v, "info": info, "terms": terms, "labels": fin["labels"], "rho": rho_hat, "R": fin["R"]}

    def moments(self, state) -> torch.Tensor:
        return state["R"]


# --------------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------------
class GEM:
    """Balanced von Mises-Fisher clustering on the unit sphere (the GEM teacher).

    Parameters
    ----------
    n_clusters : int
        Number of domains K (2 <= K <= N).
    balance : float, default 3.0
        Strength of the mixing-balance regularizer (>= 0). 0 is a vMF mixture with a uniform,
        decoupled prior; large values force equal-size domains. Dimensionless under
        ``balance_scale="evidence"``.
    balance_scale : {"evidence", "none"}, default "evidence"
        How ``balance`` becomes the objective's gamma (see the module docstring).
    max_iter : int, default 100
        Maximum MM iterations per initialization.
    tol : float, default 1e-6
        Stop when the objective improves by less than ``tol * |J|`` in one iteration.
    n_init : int, default 1
        Number of k-means++ initializations; the fit with the highest final objective is kept.
    isotropy : bool, default False
        Subtract the corpus mean vector and renormalize before fitting (sentence embeddings sit in
        a narrow cone); the mean is stored in ``center_`` and applied to new points. Off by
        default: on the synthetic cone benchmark it lowered NMI (docs/benchmarks.md).
    init : "k-means++" or array of shape (K, d), default "k-means++"
        Initial mean directions: spherical k-means++ seeding, or given directions (then
        ``n_init`` must be 1). Either way the first parameters come from one hard assignment to the
        nearest initial direction followed by an M-step.
    max_inner : int, default 50
        Newton steps at most per balanced E-step.
    inner_tol : float or None
        KKT tolerance of the E-step (relative error of the shares); default 1e-9 for float64
        input and 1e-4 for float32.
    memory_budget : int, default 512 MiB
        Bytes the (N, K) work matrices (scores and Q, old and new: 4 N K x itemsize) may take. Within
        it they stay in memory (two GEMMs per MM iteration); beyond it the fit streams X in row
        chunks and keeps nothing of size N x K (one more scores GEMM per E-step evaluation).
    chunk_size : int or None, default None
        Rows per chunk of the streamed path; setting it forces that path. None: the resident path
        when it fits ``memory_budget``, else chunks of min(65,536, memory_budget / (8 K itemsize)) rows.
    random_state : None, int or numpy.random.Generator
        Seed of the k-means++ initialization.
    device : str, default "auto"
        Torch device: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:1".
    verbose : bool, default False
        Show a progress bar over MM iterations (objective, effective K, inner steps).

    Attributes
    ----------
    means_ : ndarray (K, d) float64, unit mean directions (in the isotropy-corrected space).
    concentrations_ : ndarray (K,) float64, the kappa_k.
    log_weights_ : ndarray (K,) float64, the balanced log prior (softmax(s + log_weights_) = Q).
    shares_ : ndarray (K,) float64, soft domain shares rho of the training data.
    center_ : ndarray (d,) float64 or None, the isotropy centre.
    gamma_ : float, the balance weight gamma actually used in the objective.
    labels_ : ndarray (N,) int64, hard domain of each training document.
    objective_ : float, final J.
    history_ : list of dict, one per MM iteration of the kept initialization.
    n_iter_ : int, MM iterations run by the kept initialization.
    converged_ : bool, whether the tolerance was reached before ``max_iter``.
    streamed_ : bool, whether the fit streamed X in chunks (see ``memory_budget``).
    """

    def __init__(self, n_clusters: int, *, balance: float = DEFAULT_BALANCE, balance_scale: str = "evidence",
                 max_iter: int = 100, tol: float = 1e-6, n_init: int = 1, isotropy: bool = False,
                 init="k-means++", max_inner: int = 50, inner_tol: float | None = None,
                 memory_budget: int = 512 * 2**20, chunk_size: int | None = None, random_state=None,
                 device="auto", verbose: bool = False):
        self.n_clusters = n_clusters
        self.balance = balance
        self.balance_scale = balance_scale
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.isotropy = isotropy
        self.init = init
        self.max_inner = max_inner
        self.inner_tol = inner_tol
        self.memory_budget = memory_budget
        self.chunk_size = chunk_size
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # ---------------------------------------------------------------- parameters and inputs
    def _validate_params(self, n: int) -> None:
        check_int(self.n_clusters, "n_clusters", low=2)
        if self.n_clusters > n:
            raise ValueError(f"n_clusters={self.n_clusters} exceeds the number of documents N={n}")
        check_float(self.balance, "balance", low=0.0)
        if self.balance_scale not in ("evidence", "none"):
            raise ValueError(f"balance_scale must be 'evidence' or 'none', got {self.balance_scale!r}")
        check_int(self.max_iter, "max_iter", low=1)
        check_float(self.tol, "tol", low=0.0)
        check_int(self.n_init, "n_init", low=1)
        check_int(self.max_inner, "max_inner", low=1)
        if isinstance(self.init, str):
            if self.init != "k-means++":
                raise ValueError(f"init must be 'k-means++' or an array of shape (K, d), got {self.init!r}")
        else:
            shape = np.shape(self.init)
            if len(shape) != 2 or shape[0] != self.n_clusters:
                raise ValueError(f"init must have shape (n_clusters={self.n_clusters}, d), got {shape}")
            if self.n_init != 1:
                raise ValueError("n_init must be 1 when init is an array of initial means")
        if self.inner_tol is not None:
            check_float(self.inner_tol, "inner_tol", low=0.0, strict=True)
        check_int(self.memory_budget, "memory_budget", low=1)
        if self.chunk_size is not None:
            check_int(self.chunk_size, "chunk_size", low=1)

    def _transform(self, X: torch.Tensor) -> torch.Tensor:
        """Unit rows, then the stored isotropy correction (subtract centre, renormalize)."""
        X = normalize_rows(X)
        if self.center_ is None:
            return X
        Xc = X - torch.as_tensor(self.center_, dtype=X.dtype, device=X.device)
        norms = row_norms(Xc)
        # a point exactly at the centre has no direction after centring: keep its raw direction
        keep = norms > 1e-12
        Xc = torch.where(keep[:, None], Xc / norms.clamp(min=1e-300).to(X.dtype)[:, None], X)
        return Xc

    # ---------------------------------------------------------------- MM pieces
    def _engine(self, X):
        """The resident path when its (N, K) work matrices fit ``memory_budget``, else the streamed one."""
        N, K = X.shape[0], self.n_clusters
        need = 4 * N * K * X.element_size()          # S and Q, and their successors during an iteration
        if self.chunk_size is None and need <= self.memory_budget:
            return _Resident(X)
        chunk = self.chunk_size or int(min(1 << 16, max(256, self.memory_budget // (8 * K * X.element_size()))))
        return _Streamed(X, chunk)

    def _fit_once(self, X, rng, gamma):
        """One initialization: k-means++ seeding, one hard M-step, then MM to convergence."""
        N, d = X.shape
        K = self.n_clusters
        inner_tol = self.inner_tol or (1e-9 if X.dtype == _F64 else 1e-4)
        eng = self._engine(X)
        t0 = time.perf_counter()
        # init: spherical k-means++ centres, hard assignment, M-step
        if isinstance(self.init, str):
            mu0 = kmeans_plusplus(X, K, rng, spherical=True).to(_F64)
        else:
            mu0 = normalize_rows(as_matrix(self.init, X.device, name="init").to(_F64), name="init")
            if self.center_ is not None:
                mu0 = self._transform(mu0)
        hard = eng.nearest(mu0)
        R = torch.zeros(K, d, dtype=X.dtype, device=X.device).index_add_(0, hard, X).to(_F64)
        n = torch.bincount(hard, minlength=K).to(_F64)
        mu, kappa, _ = vmf_m_step(R, n, mu0, torch.ones(K, dtype=_F64, device=X.device), d)
        h = eng.scores(mu, kappa)
        if gamma is None:  # the balance scale is fixed once (first initialization), then the objective is fixed
            gamma = self.balance * (eng.margin(h) if self.balance_scale == "evidence" else 1.0)
        st = eng.e_step(h, gamma, None, self.max_inner, inner_tol, 0.0)
        history = [self._record(0, st, kappa, 0, time.perf_counter() - t0)]
        converged = False
        bar = tqdm(total=self.max_iter, desc="GEM MM", unit="it", disable=not self.verbose, leave=False)
        for it in range(1, self.max_iter + 1):
            t0 = time.perf_counter()
            # M-step: R = Q^T X (GEMM), n = column sums
            R = eng.moments(st)
            n = st["rho"] * N                            # column sums of Q, from the E-step
            mu_new, kappa_new, n_empty = vmf_m_step(R, n, mu, kappa, d)
            # J(Q^t, Theta^{t+1}) without another pass over the data: sum_k n_k log C + kappa_k ||R_k||
            log_c = torch.as_tensor(vmf.log_normalizer(kappa_new.cpu().numpy(), d), dtype=_F64, device=X.device)
            loglik_mid = float((n * log_c + kappa_new * (mu_new * R).sum(1)).sum())
            terms = st["terms"]
            j_mid = loglik_mid + terms["assignment_entropy"] + terms["balance_term"]
            # E-step at the new parameters, warm-started from the previous dual potentials
            # The E-step may stop once its duality gap (a bound on J's shortfall from the E-step optimum)
            # is under 1% of the MM tolerance: solving it further cannot change the stopping decision.
            h = eng.scores(mu_new, kappa_new)
            gap_tol = 0.01 * self.tol * abs(terms["objective"])
            new = eng.e_step(h, gamma, st["v"], self.max_inner, inner_tol, gap_tol)
            if new["terms"]["objective"] < j_mid and gap_tol > 0:
                # before the guard judges, solve the E-step to the strict tolerance
                new = eng.e_step(h, gamma, new["v"], self.max_inner, inner_tol, 0.0)
            j_old, j_new = terms["objective"], new["terms"]["objective"]
            if j_new < j_old or j_mid < j_old - 1e-12 * abs(j_old):
                # guard: never record a decrease; keep the last accepted state and stop. The rejected
                # value is kept so tests can tell round-off at convergence from a real decrease.
                history[-1]["guard_stop"] = True
                history[-1]["rejected_objective"] = min(j_new, j_mid)
                converged = True
                break
            mu, kappa, st = mu_new, kappa_new, new
            history.append(self._record(it, st, kappa, n_empty, time.perf_counter() - t0))
            rec = history[-1]
            bar.update(1)
            bar.set_postfix(J=f"{rec['objective']:.6g}", effK=f"{rec['effective_k']:.1f}", inner=rec["inner_steps"])
            if j_new - j_old <= self.tol * abs(j_new):
                converged = True
                break
        bar.close()
        return {"mu": mu, "kappa": kappa, "state": st, "gamma": gamma, "history": history,
                "converged": converged, "streamed": eng.streamed}

    def _record(self, it, state, kappa, n_empty, seconds):
        info = state["info"]
        rec = {"iteration": it, **state["terms"], **balance_stats(state["labels"].cpu().numpy(), self.n_clusters),
               "mean_kappa": float(kappa.mean()), "inner_steps": int(info["steps"]),
               "kkt_residual": float(info["residual"]), "duality_gap": float(info["gap"]), "n_empty": int(n_empty), "seconds": float(seconds)}
        return rec

    # ---------------------------------------------------------------- public API
    def fit(self, X, y=None):
        """Fit GEM to X, an (N, d) float array (numpy or torch); rows are projected onto the sphere.

        Returns
        -------
        self
        """
        dev = resolve_device(self.device)
        X = as_matrix(X, dev)
        self._validate_params(X.shape[0])
        X = normalize_rows(X)
        self.center_ = None
        if self.isotropy:
            self.center_ = X.mean(0, dtype=_F64).cpu().numpy()          # no float64 copy of X
            X = self._transform(X)
        rng = make_rng(self.random_state)
        best, gamma = None, None
        for _ in range(self.n_init):
            run = self._fit_once(X, np.random.default_rng(rng.integers(2**63)), gamma)
            gamma = run["gamma"]
            if best is None or run["state"]["terms"]["objective"] > best["state"]["terms"]["objective"]:
                best = run
        st = best["state"]
        self.dim_ = int(X.shape[1])
        self.gamma_ = float(best["gamma"])
        self.means_ = best["mu"].cpu().numpy()
        self.concentrations_ = best["kappa"].cpu().numpy()
        v = st["v"].cpu().numpy()
        self.log_weights_ = v - (np.log(np.exp(v - v.max()).sum()) + v.max())
        self.shares_ = st["rho"].cpu().numpy()
        self.labels_ = st["labels"].cpu().numpy().astype(np.int64)
        self.objective_ = float(st["terms"]["objective"])
        self.history_ = best["history"]
        self.n_iter_ = len(best["history"]) - 1
        self.converged_ = bool(best["converged"])
        self.streamed_ = bool(best["streamed"])
        return self

    def _check_fitted(self):
        if not hasattr(self, "means_"):
            raise ValueError("this GEM instance is not fitted yet: call fit(X) first")

    def _logits(self, X):
        """Yield s_ik + log_weights_k (up to a per-row constant) in row blocks of at most 65,536 rows."""
        self._check_fitted()
        dev = resolve_device(self.device)
        X = as_matrix(X, dev)
        if X.shape[1] != self.dim_:
            raise ValueError(f"X has dim {X.shape[1]} but the model was fitted on dim {self.dim_}")
        mu = torch.as_tensor(self.means_, device=dev)
        kappa = torch.as_tensor(self.concentrations_, device=dev)
        WT, bias, _ = _score_params(mu, kappa, self.dim_, X.dtype)
        off = (bias + torch.as_tensor(self.log_weights_, device=dev)).to(X.dtype)
        for a in range(0, X.shape[0], 1 << 16):
            yield (self._transform(X[a:a + (1 << 16)]) @ WT).add_(off)

    def predict_proba(self, X) -> np.ndarray:
        """Balanced posterior Q_ik = softmax_k(s_ik + log_weights_k), shape (N, K).

        The balance enters through the fitted log prior, so new documents are assigned as the training
        documents were; training rows reproduce the fitted Q.
        """
        return torch.cat([torch.softmax(s, dim=1) for s in self._logits(X)]).cpu().numpy()

    def predict(self, X) -> np.ndarray:
        """Hard domain of each row of X (the argmax of the balanced posterior), shape (N,).

        Processed in row blocks: memory stays O(block x K) whatever N.
        """
        return torch.cat([_argmax_rows(s) for s in self._logits(X)]).cpu().numpy().astype(np.int64)

    def fit_predict(self, X, y=None) -> np.ndarray:
        return self.fit(X).labels_

    # ---------------------------------------------------------------- persistence (no pickle)
    _ARRAYS = ("means_", "concentrations_", "log_weights_", "shares_")
    _PARAMS = ("n_clusters", "balance", "balance_scale", "max_iter", "tol", "n_init", "isotropy",
               "max_inner", "inner_tol", "memory_budget", "chunk_size", "random_state", "device")

    def save(self, directory):
        """Write the fitted model as ``model.safetensors`` + ``model.json`` into ``directory``.

        ``directory`` may be a local path, an fsspec URL or a UPath; each file is written
        atomically (:mod:`gem_assets.lib.io.storage`), ``model.json`` last.
        """
        self._check_fitted()
        directory = storage.as_path(directory)
        tensors = {name: np.ascontiguousarray(getattr(self, name)) for name in self._ARRAYS}
        if self.center_ is not None:
            tensors["center_"] = np.ascontiguousarray(self.center_)
        params = {p: getattr(self, p) for p in self._PARAMS}
        params["init"] = "k-means++"  # the fitted means are stored; the initial ones are not needed
        if not isinstance(params["random_state"], (int, type(None))):
            params["random_state"] = None
        meta = {"format": "gem-assets/GEM/1", "params": params, "dim_": self.dim_, "gamma_": self.gamma_,
                "objective_": self.objective_, "n_iter_": self.n_iter_, "converged_": self.converged_,
                "streamed_": getattr(self, "streamed_", False),
                "history_": self.history_}
        storage.write_safetensors(directory / "model.safetensors", tensors)
        storage.write_json(directory / "model.json", meta)
        return directory

    @classmethod
    def load(cls, directory) -> "GEM":
        """Load a model written by :meth:`save` (local path, URL or UPath; nothing is unpickled)."""
        directory = storage.as_path(directory)
        meta = storage.read_json(directory / "model.json")
        if meta.get("format") != "gem-assets/GEM/1":
            raise ValueError(f"{directory} does not hold a GEM model (format {meta.get('format')!r})")
        model = cls(**meta["params"])
        tensors = storage.read_safetensors(directory / "model.safetensors")
        for name in cls._ARRAYS:
            setattr(model, name, tensors[name])
        model.center_ = tensors.get("center_")
        for name in ("dim_", "gamma_", "objective_", "n_iter_", "converged_", "history_"):
            setattr(model, name, meta[name])
        model.streamed_ = bool(meta.get("streamed_", False))
        return model
