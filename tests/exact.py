"""Exact reference computations for tests (float64 NumPy): Kalman filter and RTS smoother
for linear-Gaussian state-space models

    x_0 ~ N(m0, P0),  x_t = A x_{t-1} + N(0, Q),  y_t = H x_t + N(0, R).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class LinearGaussian(NamedTuple):
    m0: np.ndarray
    P0: np.ndarray
    A: np.ndarray
    Q: np.ndarray
    H: np.ndarray
    R: np.ndarray


def scalar_model(a=0.9, q=1.0, r=0.5, p0=1.0) -> LinearGaussian:
    """1-D model with std-devs ``q``, ``r``, ``sqrt(p0)`` given as scales (q, r std)."""
    return LinearGaussian(
        m0=np.zeros(1), P0=np.eye(1) * p0, A=np.eye(1) * a, Q=np.eye(1) * q**2,
        H=np.eye(1), R=np.eye(1) * r**2,
    )  # fmt: skip


def kalman(model: LinearGaussian, ys: np.ndarray):
    """Kalman filter. ``ys`` has shape (T, dy) (NaN rows are missing).

    Returns (log-likelihood, filtered means (T, dx), filtered covs, predicted means,
    predicted covs)."""
    ys = np.asarray(ys, dtype=np.float64)
    if ys.ndim == 1:
        ys = ys[:, None]
    m0, P0, A, Q, H, R = (np.asarray(a, dtype=np.float64) for a in model)
    T = ys.shape[0]
    dx = m0.shape[0]
    loglik = 0.0
    fm, fP = np.zeros((T, dx)), np.zeros((T, dx, dx))
    pm, pP = np.zeros((T, dx)), np.zeros((T, dx, dx))
    m, P = m0, P0
    for t in range(T):
        if t > 0:
            m, P = A @ m, A @ P @ A.T + Q
        pm[t], pP[t] = m, P
        y = ys[t]
        if not np.any(np.isnan(y)):
            S = H @ P @ H.T + R
            resid = y - H @ m
            sign, logdet = np.linalg.slogdet(2 * np.pi * S)
            loglik += -0.5 * (logdet + resid @ np.linalg.solve(S, resid))
            K = P @ H.T @ np.linalg.inv(S)
            m = m + K @ resid
            P = P - K @ S @ K.T
        fm[t], fP[t] = m, P
    return loglik, fm, fP, pm, pP


def scalar_log_likelihoods(a, ys, q=1.0, r=0.5, p0=1.0) -> np.ndarray:
    """Kalman log-likelihoods of ``scalar_model(a, q, r, p0)`` for every coefficient in the
    array ``a`` at once (the scalar recursions of ``kalman`` on arrays; no missing
    values)."""
    a = np.asarray(a, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64).reshape(-1)
    m, P, loglik = np.zeros_like(a), np.full_like(a, p0), np.zeros_like(a)
    for t, y in enumerate(ys):
        if t > 0:
            m, P = a * m, a * a * P + q**2
        S = P + r**2
        loglik += -0.5 * (np.log(2 * np.pi * S) + (y - m) ** 2 / S)
        gain = P / S
        m, P = m + gain * (y - m), P - gain * P
    return loglik


def rts(model: LinearGaussian, ys: np.ndarray):
    """RTS smoother. Returns smoothed means (T, dx), covariances (T, dx, dx) and the lag-one
    cross covariances ``Cov(x_t, x_{t+1} | y)`` (T-1, dx, dx) = ``J_t P_{t+1|T}``."""
    _, fm, fP, pm, pP = kalman(model, ys)
    A = np.asarray(model.A, dtype=np.float64)
    T = fm.shape[0]
    sm, sP = fm.copy(), fP.copy()
    cross = np.zeros((max(T - 1, 0),) + fP.shape[1:])
    for t in range(T - 2, -1, -1):
        J = fP[t] @ A.T @ np.linalg.inv(pP[t + 1])
        sm[t] = fm[t] + J @ (sm[t + 1] - pm[t + 1])
        sP[t] = fP[t] + J @ (sP[t + 1] - pP[t + 1]) @ J.T
        cross[t] = J @ sP[t + 1]
    return sm, sP, cross
