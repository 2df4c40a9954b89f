"""Parameter and input validation shared by every estimator of the library.

Each check raises ``ValueError`` with a message that says what is wrong and what to pass instead.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = ["resolve_device", "as_matrix", "normalize_rows", "row_norms", "check_int", "check_float", "make_rng"]


def resolve_device(device) -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; anything else goes to ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use 'cpu' or 'auto'")
    return dev


def as_matrix(X, device: torch.device, *, name: str = "X", min_rows: int = 1) -> torch.Tensor:
    """Validate an (N, d) float matrix and return it as a torch tensor on ``device``.

    float32 and float64 inputs keep their precision (float32 is the fast path, float64 the exact
    one); every other dtype is converted to float64.

    Raises
    ------
    ValueError
        If X is ragged, empty, not 2-D, has fewer than 2 columns or holds NaN or inf.
    """
    if isinstance(X, torch.Tensor):
        t = X.detach()
        if not torch.is_floating_point(t) or t.dtype not in (torch.float32, torch.float64):
            t = t.to(torch.float64)
    else:
        try:
            a = np.asarray(X)
        except ValueError as err:  # numpy >= 1.24 refuses ragged nested sequences
            raise ValueError(f"{name} is ragged: every row must have the same number of columns") from err
        if a.dtype == object:
            raise ValueError(f"{name} is ragged or holds non-numbers: pass an (N, d) array of floats")
        if a.dtype not in (np.float32, np.float64):
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):
                raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
            a = a.astype(np.float64)
        t = torch.from_numpy(np.ascontiguousarray(a))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N documents x d dimensions), got shape {tuple(t.shape)}")
    n, d = t.shape
    if n == 0 or d == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): pass at least one document with d >= 2")
    if d < 2:
        raise ValueError(f"{name} has dim {d}: points on the sphere S^(d-1) need d >= 2")
    if n < min_rows:
        raise ValueError(f"{name} has {n} rows but at least {min_rows} are needed")
    # in row blocks: a whole-matrix isfinite would allocate an (N, d) bool array (384 MB at 1M x 384)
    bad = sum(int((~torch.isfinite(t[a:a + _BLOCK])).any(1).sum()) for a in range(0, n, _BLOCK))
    if bad:
        raise ValueError(f"{name} holds NaN or inf in {bad} row(s): drop or repair them before fitting")
    return t.to(device)


_BLOCK = 1 << 16
#: |norm - 1| below which a row counts as unit: the scale of the round-off of a float32 GEMM over d terms
_UNIT_TOL = {torch.float32: 2.0**-20, torch.float64: 1e-12}


def row_norms(X: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each row in float64, (N,), computed in row blocks: converting all of X at
    once would hold a float64 copy of it (3 GB at 1M x 384)."""
    return torch.cat([torch.linalg.vector_norm(X[a:a + _BLOCK], dim=1, dtype=torch.float64)
                      for a in range(0, X.shape[0], _BLOCK)])


def normalize_rows(X: torch.Tensor, *, name: str = "X") -> torch.Tensor:
    """Project rows onto the unit sphere; zero rows have no direction and are rejected.

    Rows that are unit already (|norm - 1| within the round-off of X's dtype, as the embeddings of a
    normalizing encoder are) are returned as they are, without a copy of X.
    """
    norms = row_norms(X)
    if float((norms - 1.0).abs().max()) <= _UNIT_TOL[X.dtype]:
        return X
    zero = norms <= 1e-30
    if bool(zero.any()):
        idx = torch.nonzero(zero).ravel()[:5].tolist()
        raise ValueError(
            f"{name} holds {int(zero.sum())} zero vector(s) (rows {idx}...): "
            "a zero vector has no direction on the sphere; drop those documents"
        )
    return X / norms.to(X.dtype)[:, None]


def check_int(value, name: str, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_float(value, name: str, *, low: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")
    return value


def make_rng(random_state) -> np.random.Generator:
    """None -> fresh entropy; int -> seeded Generator; a Generator is used as is."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None or isinstance(random_state, numbers.Integral):
        return np.random.default_rng(random_state)
    raise ValueError(f"random_state must be None, an int or a numpy Generator, got {random_state!r}")
