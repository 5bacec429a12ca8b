"""A stationary AR(2) process fitted to a subject's own motion: the shared core of generated head pose and idle face.

Why one module: ``--pose generated`` (:mod:`avatar3d.render.pose_sources`) and ``--idle generated``
(:mod:`avatar3d.render.idle_motion`) both need "move like the subject did, forever, without drift
or jumps, never leaving what the avatar was trained on".  The recipe is the same for both:

* per latent axis a critically damped AR(2), z_t = 2ρ z_{t-1} - ρ² z_{t-2} + σ e_t, whose variance
  and mean squared step equal the subject's (:func:`critically_damped`): the spread and the RMS speed
  are the subject's by construction and the double pole gives smooth, non-oscillating motion;
* the latent axes map linearly onto what is observed (identity for head pose; a basis that
  decorrelates the face channels for idle motion);
* while sampling, each observed step is limited to the subject's largest step (per group of axes:
  a rare large innovation cannot make anything jump), and each observed axis is held inside the
  trained range *in the recursion* (the next frame continues from the held value, so the track
  does not rest on the edge as clipping a finished track does);
* a sample starts from a real pair of consecutive training frames (no jump at frame 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def consecutive_runs(ids: np.ndarray) -> list[np.ndarray]:
    """Runs of consecutive frame indices in ``ids`` (steps are only measured inside a run)."""
    ids = np.asarray(ids, dtype=np.int64)
    cuts = np.flatnonzero(np.diff(ids) != 1) + 1
    return [r for r in np.split(ids, cuts) if len(r)]


def critically_damped(var: np.ndarray, step_ms: np.ndarray,
                      max_radius: float = 0.999) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(φ1, φ2, σ) per axis of x_t = φ1 x_{t-1} + φ2 x_{t-2} + σ e_t with a double pole ρ
    (φ1 = 2ρ, φ2 = -ρ²) whose variance is ``var`` and mean squared step ``step_ms``.

    E[Δ²] / Var = 2 (1 - r1) with r1 = 2ρ / (1 + ρ²) the lag-1 autocorrelation, so ρ follows from the
    ratio and σ from the variance (Var = σ² / gain).  ρ is capped at ``max_radius`` (stationary).
    """
    var = np.maximum(np.asarray(var, np.float64), 1e-12)
    r1 = np.clip(1.0 - 0.5 * np.asarray(step_ms, np.float64) / var, 0.01, 1.0 - 1e-6)  # lag-1 autocorrelation
    rho = np.minimum((1.0 - np.sqrt(1.0 - r1 ** 2)) / r1, max_radius)
    phi1, phi2 = 2.0 * rho, -rho ** 2
    gain = (1.0 + phi2) * ((1.0 - phi2) ** 2 - phi1 ** 2) / (1.0 - phi2)  # Var = σ² / gain
    sigma = np.sqrt(var * np.maximum(gain, 1e-12))
    return phi1, phi2, sigma


@dataclass(frozen=True)
class StationaryAR2:
    """Independent AR(2) latent axes z, observed as x = mean + basis z, limited and held in x (see the module doc).

    ``basis`` None means the identity (latent axis j is observed axis j, no matrix products: the
    head-pose sampler's numbers are exactly those it had before this class existed).  ``groups``
    None limits each observed axis's step on its own; otherwise the Euclidean norm of each group's
    step is limited to ``max_step`` of that group.
    """

    mean: np.ndarray  # [k] observed mean
    phi1: np.ndarray  # [m] per latent axis
    phi2: np.ndarray  # [m]
    sigma: np.ndarray  # [m] innovation standard deviation
    low: np.ndarray  # [k] trained range of the observed axes (held in the recursion)
    high: np.ndarray  # [k]
    max_step: np.ndarray  # [k] per observed axis, or [len(groups)] per group
    starts: np.ndarray  # [M, 2, k] observed pairs of consecutive training frames a sample may start from
    basis: np.ndarray | None = None  # [k, m] latent -> observed offset
    unmix: np.ndarray | None = None  # [m, k] observed offset -> latent (the inverse of basis)
    groups: tuple[tuple[int, ...], ...] | None = None

    @property
    def spectral_radius(self) -> float:
        """Largest |eigenvalue| of the companion matrix: < 1 means stationary (no drift, no blow-up)."""
        k = len(self.phi1)
        companion = np.block([[np.diag(self.phi1), np.diag(self.phi2)], [np.eye(k), np.zeros((k, k))]])
        return float(np.abs(np.linalg.eigvals(companion)).max())

    def _latent(self, x: np.ndarray) -> np.ndarray:
        return x if self.unmix is None else self.unmix @ x

    def _limit(self, step: np.ndarray) -> np.ndarray:
        if self.groups is None:
            return np.clip(step, -self.max_step, self.max_step)
        for part, limit in zip(self.groups, self.max_step):
            idx = list(part)
            size = float(np.linalg.norm(step[idx]))
            if size > limit:
                step[idx] *= limit / size
        return step

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """[n, k] observed values continuing a randomly chosen real pair of consecutive training frames,
        and the [n] mask of frames where an axis was held at the trained range."""
        start = np.clip(self.starts[rng.integers(len(self.starts))], self.low, self.high) - self.mean
        low, high = self.low - self.mean, self.high - self.mean
        noise = rng.standard_normal((n, len(self.sigma))) * self.sigma
        prev2, prev1 = self._latent(start[0]), self._latent(start[1])  # latent state
        last = start[1]  # observed
        out = np.empty((n, len(self.mean)))
        held = np.zeros(n, dtype=bool)
        for i in range(n):
            z = self.phi1 * prev1 + self.phi2 * prev2 + noise[i]
            x = z if self.basis is None else self.basis @ z
            x = np.clip(last + self._limit(x - last), low, high)
            held[i] = bool(((x <= low) | (x >= high)).any())
            out[i], last, prev2, prev1 = x, x, prev1, self._latent(x)
        return out + self.mean, held
