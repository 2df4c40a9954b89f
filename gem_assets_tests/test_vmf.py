"""Tests of gem_assets.lib.teacher.vmf against mpmath (50 digits) and against the vMF sampling law.

Relative errors are measured as |ours - ref| <= rtol * |ref| + atol. The absolute floor ``atol``
exists because log C_d(kappa) and log I_nu(x) cross zero (log C_384 near kappa ~ 987, log C_4096 near
16214, log I_nu(x) where I_nu(x) = 1); there a pure relative error is meaningless. The floor (1e-9)
is still above the rounding of the ~kappa-sized terms that cancel there (about 1e-16 * kappa).
"""

from __future__ import annotations

import functools
import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gem_assets.lib.teacher import vmf

mp.mp.dps = 50

REF_DIMS = (2, 3, 16, 64, 384, 768, 1024, 4096)
REF_KAPPAS = np.logspace(-3, 6, 40)
RTOL_LOGC = 1e-6  # the contract; the measured error is ~1e-13 (docs/method.md)
ATOL_LOGC = 1e-9  # documented absolute floor where log C_d crosses zero


@functools.lru_cache(maxsize=None)
def _mp_besseli(nu: float, x: float):
    """I_nu(x) at 50 digits. mpmath's default term cap is too small for nu ~ 2000, x ~ 3e4."""
    nu_m, x_m = mp.mpf(nu), mp.mpf(x)
    try:
        return mp.besseli(nu_m, x_m)
    except mp.libmp.libhyper.NoConvergence:
        return mp.besseli(nu_m, x_m, maxterms=10**6)


def _mp_log_iv(nu: float, x: float) -> float:
    return float(mp.log(_mp_besseli(nu, x)))


def _mp_log_normalizer(kappa: float, dim: int) -> float:
    nu = mp.mpf(dim) / 2 - 1
    k = mp.mpf(kappa)
    return float(nu * mp.log(k) - mp.mpf(dim) / 2 * mp.log(2 * mp.pi) - mp.log(_mp_besseli(float(nu), kappa)))


def _mp_ratio(kappa: float, dim: int) -> tuple[float, float]:
    nu = dim / 2 - 1
    a = _mp_besseli(nu + 1, kappa) / _mp_besseli(nu, kappa)
    return float(a), float(1 - a)


def _assert_close(ours, ref, rtol, atol, what):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    err = np.abs(ours - ref)
    bad = err > rtol * np.abs(ref) + atol
    assert not bad.any(), f"{what}: {int(bad.sum())} points off, worst error {err.max():.3e}"


# ---------------------------------------------------------------------------------------------
# Debye polynomials
# ---------------------------------------------------------------------------------------------


def test_debye_polynomials_match_dlmf_closed_forms():
    from fractions import Fraction as F

    u, v, q, y = vmf._debye_polynomials(4)
    # DLMF 10.41.10: u_1 = (3t - 5t^3)/24, u_2 = (81t^2 - 462t^4 + 385t^6)/1152
    assert u[1] == [0, F(3, 24), 0, F(-5, 24), 0]
    assert u[2][:7] == [0, 0, F(81, 1152), 0, F(-462, 1152), 0, F(385, 1152)]
    assert all(c == 0 for c in u[2][7:])
    # DLMF 10.41.12: v_1 = (-9t + 7t^3)/24
    assert v[1][:4] == [0, F(-9, 24), 0, F(7, 24)]
    # (1 - t) q_1 = v_1 - t u_1 and (1 - t^2) y_1 = u_1 - v_1 = t (1 - t^2) / 2
    assert y[1][:2] == [0, F(1, 2)] and all(c == 0 for c in y[1][2:])
    # stacked, zero-padded descending coefficients: row 0 is u_0 = 1
    assert vmf._U_COEF[0, -1] == 1.0 and not vmf._U_COEF[0, :-1].any() and len(vmf._U_COEF) == vmf.DEBYE_TERMS


# ---------------------------------------------------------------------------------------------
# log I_nu and log C_d against mpmath
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nu", [0.0, 0.5, 1.0, 7.0, 30.0, 191.0, 2047.0])
def test_log_bessel_iv_matches_mpmath(nu):
    ref = np.array([_mp_log_iv(nu, float(x)) for x in REF_KAPPAS])
    ours = vmf.log_bessel_iv(nu, REF_KAPPAS)
    assert ours.shape == REF_KAPPAS.shape
    # Measured max |error| / (1 + |ref|) is ~1e-13; 1e-11 leaves room for platform libm differences.
    _assert_close(ours, ref, 1e-11, 1e-11, f"log I_{nu}")


def test_log_bessel_iv_regime_boundaries_are_continuous():
    # Across nu = DEBYE_NU_MIN (Debye vs series/Hankel) and x = hankel_x_min(nu) (series vs Hankel)
    # the two sides must agree to rounding, or a fit would see a step in its objective.
    below = np.nextafter(vmf.DEBYE_NU_MIN, 0)
    xs = np.logspace(-3, 6, 200)
    a = vmf.log_bessel_iv(vmf.DEBYE_NU_MIN, xs)
    b = vmf.log_bessel_iv(below, xs)
    assert np.all(np.abs(a - b) <= 1e-12 * (1 + np.abs(a)))
    for nu in [0.0, 1.0, 2.5, 7.0, 11.0, 11.5]:
        x0 = float(vmf.hankel_x_min(nu))
        lo, hi = vmf.log_bessel_iv(nu, np.array([x0, np.nextafter(x0, np.inf)]))
        assert abs(hi - lo) <= 1e-13 * abs(lo)


def test_log_bessel_iv_broadcasts_and_handles_zero():
    out = vmf.log_bessel_iv(np.array([[0.0], [3.0]]), np.array([0.0, 1.0, 2.0]))
    assert out.shape == (2, 3)
    assert out[0, 0] == 0.0 and out[1, 0] == -np.inf
    assert isinstance(vmf.log_bessel_iv(0.5, 2.0), np.floating)
    # closed form at nu = 1/2: I_{1/2}(x) = sqrt(2 / (pi x)) sinh x
    x = np.array([1e-6, 1e-3, 0.7, 5.0, 300.0])
    exact = 0.5 * np.log(2 / (np.pi * x)) + np.array([float(mp.log(mp.sinh(mp.mpf(v)))) for v in x])
    np.testing.assert_allclose(vmf.log_bessel_iv(0.5, x), exact, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("dim", REF_DIMS)
def test_log_normalizer_matches_mpmath(dim):
    ref = np.array([_mp_log_normalizer(float(k), dim) for k in REF_KAPPAS])
    ours = vmf.log_normalizer(REF_KAPPAS, dim)
    _assert_close(ours, ref, RTOL_LOGC, ATOL_LOGC, f"log C_{dim}")
    # The contract is 1e-6; hold the implementation to what it measurably achieves as well.
    _assert_close(ours, ref, 1e-11, 1e-10, f"log C_{dim} (tight)")


@pytest.mark.parametrize("dim,kappa", [(384, 986.768), (768, 2294.735), (4096, 16213.664)])
def test_log_normalizer_near_its_zero_crossing(dim, kappa):
    # Where log C_d crosses zero the relative error is meaningless; this is what the absolute
    # floor is for. The absolute error there is rounding of ~kappa-sized terms (~1e-13).
    ref = _mp_log_normalizer(kappa, dim)
    assert abs(ref) < 1e-3
    assert abs(vmf.log_normalizer(kappa, dim) - ref) <= RTOL_LOGC * abs(ref) + ATOL_LOGC
    assert abs(vmf.log_normalizer(kappa, dim) - ref) <= 1e-11


def test_log_normalizer_finite_on_dense_grid():
    kappas = np.concatenate([[0.0], np.logspace(-3, 6, 2000), [1e7, 1e9]])
    for dim in (2, 3, 4, 5, 16, 23, 24, 25, 26, 50, 51, 64, 384, 768, 1000, 1024, 2047, 4096):
        out = vmf.log_normalizer(kappas, dim)
        assert np.isfinite(out).all(), f"non-finite log C_{dim}"
        # d/dkappa log C_d = -A_d(kappa) < 0: non-increasing up to rounding.
        assert np.all(np.diff(out) <= 1e-12 * (1 + np.abs(out[1:])))


@pytest.mark.parametrize("dim", [2, 3, 7, 384, 4096])
def test_log_normalizer_at_zero_is_minus_log_surface_area(dim):
    log_area = math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)
    assert vmf.log_normalizer(0.0, dim) == pytest.approx(-log_area, rel=1e-13, abs=1e-13)
    assert vmf.log_normalizer(1e-12, dim) == pytest.approx(-log_area, rel=1e-12, abs=1e-12)


def test_log_normalizer_shape_and_dim_validation():
    assert vmf.log_normalizer(np.ones((2, 3)), 384).shape == (2, 3)
    for bad_dim in (1, 0, 2.5, True, "3"):
        with pytest.raises(ValueError, match="dim"):
            vmf.log_normalizer(1.0, bad_dim)
    with pytest.raises(ValueError, match=">= 0"):
        vmf.log_normalizer([1.0, -1.0], 3)
    with pytest.raises(ValueError, match="NaN or inf"):
        vmf.log_normalizer([1.0, np.nan], 3)
    with pytest.raises(ValueError, match="NaN or inf"):
        vmf.log_bessel_iv(1.0, np.inf)
    with pytest.raises(ValueError, match="nu"):
        vmf.log_bessel_iv(-0.5, 1.0)


# ---------------------------------------------------------------------------------------------
# A_d(kappa) and 1 - A_d(kappa)
# ---------------------------------------------------------------------------------------------

RATIO_KAPPAS = np.logspace(-3, 6, 19)


@pytest.mark.parametrize("dim", [2, 3, 16, 25, 64, 384, 4096])
def test_bessel_ratio_and_complement_match_mpmath(dim):
    ref = np.array([_mp_ratio(float(k), dim) for k in RATIO_KAPPAS])
    a = vmf.bessel_ratio(RATIO_KAPPAS, dim)
    c = vmf.bessel_ratio_complement(RATIO_KAPPAS, dim)
    # Both A (tiny at small kappa) and 1 - A (tiny at large kappa, ~ (d-1)/(2 kappa)) keep full
    # relative precision; measured max ~3e-13 (at the Debye threshold), typically ~1e-15.
    np.testing.assert_allclose(a, ref[:, 0], rtol=1e-11, atol=0)
    np.testing.assert_allclose(c, ref[:, 1], rtol=1e-11, atol=0)


def test_bessel_ratio_complement_is_accurate_where_tiny():
    # 1 - A_d(1e6) ~ (d - 1) / 2e6: forming it as 1 - A would keep only ~9 digits.
    for dim in (3, 384, 768):
        ref = _mp_ratio(1e6, dim)[1]
        assert vmf.bessel_ratio_complement(1e6, dim) == pytest.approx(ref, rel=1e-13)


def test_bessel_ratio_monotone_and_bounded():
    kappas = np.concatenate([[0.0], np.logspace(-3, 7, 4000)])
    for dim in (2, 3, 16, 24, 25, 26, 384, 768, 4096):
        a = vmf.bessel_ratio(kappas, dim)
        c = vmf.bessel_ratio_complement(kappas, dim)
        assert a[0] == 0.0 and c[0] == 1.0
        assert np.all(np.diff(a) >= 0) and np.all(np.diff(c) <= 0)
        assert np.all((a >= 0) & (a < 1)) and np.all((c > 0) & (c <= 1))
        assert np.abs(a + c - 1).max() < 4e-15


# ---------------------------------------------------------------------------------------------
# kappa: Banerjee and the exact MLE
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 3, 16, 384, 768, 4096])
def test_kappa_mle_inverts_the_ratio(dim):
    rbar = np.concatenate([np.linspace(1e-4, 1 - 1e-4, 301), [1e-6, 0.5, 1 - 1e-6]])
    kappa = vmf.kappa_mle(rbar, dim)
    assert kappa.shape == rbar.shape and np.isfinite(kappa).all()
    inside = (kappa > 1e-3) & (kappa < 1e6)
    assert inside.sum() > 250
    a = vmf.bessel_ratio(kappa[inside], dim)
    c = vmf.bessel_ratio_complement(kappa[inside], dim)
    np.testing.assert_allclose(a, rbar[inside], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c, 1 - rbar[inside], rtol=1e-11, atol=0)
    order = np.argsort(rbar)
    # non-decreasing up to rounding: rbar holds 0.5 twice (the grid's midpoint and the extra point), and the
    # two solves may differ in the last bit
    k = kappa[order]
    assert np.all(np.diff(k) >= -4 * np.finfo(float).eps * k[1:])


@settings(max_examples=60, deadline=None)
@given(log_kappa=st.floats(-2.9, 5.9), dim=st.sampled_from([2, 3, 5, 16, 50, 384, 768, 4096]))
def test_kappa_mle_recovers_kappa(log_kappa, dim):
    kappa = 10.0**log_kappa
    rbar = vmf.bessel_ratio(kappa, dim)
    if rbar > 0.999:  # rbar is then only known to ~1e-16 absolute: compare through 1 - A instead
        c = vmf.bessel_ratio_complement(vmf.kappa_mle(rbar, dim), dim)
        assert c == pytest.approx(1 - rbar, rel=1e-10)
    else:
        assert vmf.kappa_mle(rbar, dim) == pytest.approx(kappa, rel=1e-9)


@pytest.mark.parametrize("dim", [384, 768])
def test_banerjee_close_to_mle(dim):
    rbar = np.linspace(0.1, 0.95, 18)
    exact = vmf.kappa_mle(rbar, dim)
    approx = vmf.kappa_banerjee(rbar, dim)
    assert np.all(np.abs(approx / exact - 1) < 0.01)


def test_kappa_mle_edges_and_clipping():
    dim = 384
    assert vmf.kappa_mle(0.0, dim) == 1e-3
    assert vmf.kappa_mle(1.0, dim) == 1e6
    assert vmf.kappa_mle(1.0 + 1e-15, dim) == 1e6  # rounding slack above 1 is accepted
    # below A(kappa_min) and above A(kappa_max): clipped, not extrapolated
    a_min = vmf.bessel_ratio(1e-3, dim)
    assert vmf.kappa_mle(0.5 * a_min, dim) == 1e-3
    assert vmf.kappa_mle(0.999, dim, kappa_max=10.0) == 10.0
    assert vmf.kappa_mle(1e-9, dim, kappa_min=0.5) == 0.5
    out = vmf.kappa_mle(np.array([[0.0, 0.3], [0.9, 1.0]]), dim)
    assert out.shape == (2, 2) and np.isfinite(out).all()
    assert out[0, 0] == 1e-3 and out[1, 1] == 1e6 and 1e-3 < out[0, 1] < out[1, 0] < 1e6
    assert isinstance(vmf.kappa_mle(0.5, dim), np.floating)
    assert vmf.kappa_mle(np.zeros(0), dim).shape == (0,)
    assert vmf.kappa_banerjee(1.0, dim) == np.inf and vmf.kappa_banerjee(0.0, dim) == 0.0


def test_kappa_validation():
    for bad in (-0.1, 1.1, np.nan, np.inf):
        with pytest.raises(ValueError, match="rbar"):
            vmf.kappa_mle([0.5, bad], 3)
        with pytest.raises(ValueError, match="rbar"):
            vmf.kappa_banerjee(bad, 3)
    with pytest.raises(ValueError, match="dim"):
        vmf.kappa_mle(0.5, 1)
    with pytest.raises(ValueError, match="kappa_min"):
        vmf.kappa_mle(0.5, 3, kappa_min=10.0, kappa_max=1.0)
    with pytest.raises(ValueError, match="kappa_min"):
        vmf.kappa_mle(0.5, 3, kappa_min=0.0)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dim,kappa,n",
    [(3, 0.0, 20000), (3, 1.0, 20000), (3, 50.0, 20000), (384, 0.0, 4000), (384, 100.0, 4000),
     (384, 2000.0, 4000), (384, 1e5, 4000)],
)
def test_sample_vmf_matches_mean_resultant_length(dim, kappa, n):
    rng = np.random.default_rng(1234 + dim + int(kappa))
    mu = rng.standard_normal(dim)
    mu /= np.linalg.norm(mu)
    x = vmf.sample_vmf(mu, kappa, n, rng)
    assert x.shape == (n, dim) and x.dtype == np.float64 and np.isfinite(x).all()
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-14)
    w = x @ mu
    target = vmf.bessel_ratio(kappa, dim)
    se = max(w.std(ddof=1), 1e-300) / math.sqrt(n)
    assert abs(w.mean() - target) < 5 * se, (w.mean(), target, se)
    if kappa > 0 and target > 0.3:
        # E[x] = A mu: the empirical mean direction matches mu. The tangent part of the mean has
        # squared norm ~ (1 - E[w^2]) / n, so the angle to mu is ~ sqrt((1 - E w^2) / n) / A.
        m = x.mean(axis=0)
        cos = float(m @ mu / np.linalg.norm(m))
        tangent_sd = math.sqrt(max(1 - np.mean(w**2), 0.0) / n)
        assert math.sqrt(max(1 - cos * cos, 0.0)) < 5 * tangent_sd / target + 1e-12
        # and the resultant length of the sample matches A within its own sampling error
        rbar = float(np.linalg.norm(m))
        assert abs(rbar - math.sqrt(target**2 + tangent_sd**2)) < 5 * se + 2 * tangent_sd**2 / target


def test_sample_vmf_tangent_part_is_isotropic():
    # For d = 3 the tangent direction is uniform on a circle: its angle has mean cosine/sine ~ 0.
    rng = np.random.default_rng(7)
    mu = np.array([0.0, 0.0, 1.0])
    x = vmf.sample_vmf(mu, 5.0, 20000, rng)
    ang = np.arctan2(x[:, 1], x[:, 0])
    assert abs(np.cos(ang).mean()) < 0.03 and abs(np.sin(ang).mean()) < 0.03


@pytest.mark.parametrize("kappa", [0.0, 5.0])
def test_sample_vmf_is_seeded(kappa):
    mu = np.array([0.6, 0.0, 0.8])
    a = vmf.sample_vmf(mu, kappa, 50, np.random.default_rng(3))
    assert np.array_equal(a, vmf.sample_vmf(mu, kappa, 50, np.random.default_rng(3)))
    assert not np.array_equal(a, vmf.sample_vmf(mu, kappa, 50, np.random.default_rng(4)))


def test_sample_vmf_validation_and_degenerate_sizes():
    rng = np.random.default_rng(0)
    mu = np.array([1.0, 0.0, 0.0])
    assert vmf.sample_vmf(mu, 3.0, 0, rng).shape == (0, 3)
    with pytest.raises(ValueError, match="unit norm"):
        vmf.sample_vmf(np.array([1.0, 1.0, 0.0]), 3.0, 5, rng)
    with pytest.raises(ValueError, match="length d >= 2"):
        vmf.sample_vmf(np.array([1.0]), 3.0, 5, rng)
    with pytest.raises(ValueError, match="kappa"):
        vmf.sample_vmf(mu, -1.0, 5, rng)
    with pytest.raises(ValueError, match="NaN or inf"):
        vmf.sample_vmf(mu, np.inf, 5, rng)
    with pytest.raises(ValueError, match="n must"):
        vmf.sample_vmf(mu, 1.0, -1, rng)
    with pytest.raises(ValueError, match="Generator"):
        vmf.sample_vmf(mu, 1.0, 5, 0)
    # d = 2 works (the tangent space is a line)
    x = vmf.sample_vmf(np.array([0.0, 1.0]), 10.0, 1000, rng)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-14)


def test_module_does_not_import_scipy_or_dagster():
    # Load the file on its own (not through the package __init__, which may import torch) in a fresh
    # interpreter: importing it needs nothing beyond numpy and the standard library (sample_vmf
    # imports scipy when it is called).
    import subprocess
    import sys

    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('vmf_alone', {vmf.__file__!r}); "
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); "
        "bad = [m for m in ('scipy', 'dagster', 'torch') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
