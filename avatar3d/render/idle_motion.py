"""Idle upper-face motion (brows, eyes, cheeks) sampled from a model fitted to the subject's training frames.

Why: speech determines the mouth, not what the brows and cheeks do.  Playing the training
clip's upper face back (``--idle subject``) repeats it visibly on long speech, and a generated
head pose (``--pose generated``) has no frames of its own to take it from; freezing it at the
median (``static``) looks dead.  So ``--idle generated`` samples new motion with the subject's
own statistics, the way ``--pose generated`` samples head motion
(:class:`avatar3d.render.ar2.StationaryAR2`: a critically damped AR(2) per latent axis matched to
its variance and mean squared step inside runs of consecutive training frames, each channel held
inside its trained 1st-99th percentile range in the recursion and its step limited to the
subject's largest).

Channels move together as the subject's do (left and right brows, a brow's inner and outer
parts): independent channels would show brows twitching on their own.  The latent axes are the
subject's *slow features*: the basis in which the channels are uncorrelated both frame by frame
and in their frame-to-frame steps (generalised eigenvectors of the step covariance against the
covariance).  Principal components only decorrelate the values; their steps stay correlated, so
independent AR(2)s on them get each channel's speed wrong by the ignored cross terms.  With this
basis the process reproduces the whole covariance and step covariance of the moving channels,
before the range and step limits.

Channels the tracker holds essentially still (standard deviation below
:attr:`IdleMotionConfig.still_std`) stay at their median: there is nothing to learn from them
and sampling would add motion the avatar never showed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh

from avatar3d.errors import Avatar3DError
from avatar3d.face.blendshape_names import UPPER_FACE_PREFIXES
from avatar3d.render.ar2 import StationaryAR2, consecutive_runs, critically_damped
from avatar3d.render.camera import RANGE_PERCENTILES

IDLE_STREAM = 0x1D1E  # the idle sampler's own random stream (blinks: the bare seed; head pose: 0x9E5E)


@dataclass(frozen=True)
class IdleMotionConfig:
    """How the idle model is fitted."""

    still_std: float = 5e-4
    """Channels whose standard deviation over the training frames is below this (ARKit weight units,
    0.05 % of a channel's full range) are held at their median.  On the 16 s test subject the four
    eye- and cheek-squint channels (std 0.00025-0.00042) fall below it; the next smallest moves
    with std 0.0009."""
    min_frames: int = 50
    """Consecutive training frames the fit needs (2 s at 25 fps), as the head-motion model."""
    max_radius: float = 0.999
    """Cap on the AR(2) pole (keeps every latent axis stationary)."""


@dataclass(frozen=True)
class IdleMotionModel:
    """The subject's upper-face channels: medians, which ones move, and the process that moves them."""

    names: tuple[str, ...]  # the upper-face channels, in the avatar's order
    median: np.ndarray  # [C] over the training frames
    moving: np.ndarray  # [C] bool: sampled (else held at the median)
    process: StationaryAR2 | None  # over the moving channels (None: nothing moves)

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """([n, C] float32 channel values, [n] mask of frames with a channel held at its range edge).

        The same seed gives the same values; the random stream is the idle sampler's own, so it
        does not change with ``--blink`` or ``--pose``.
        """
        out = np.repeat(self.median[None].astype(np.float64), n, axis=0)
        held = np.zeros(n, dtype=bool)
        if self.process is not None and n > 0:
            values, held = self.process.sample(n, np.random.default_rng([int(seed), IDLE_STREAM]))
            out[:, self.moving] = values
        return out.astype(np.float32), held

    def describe(self, seed: int, held: np.ndarray) -> str:
        """One log line: what moves, from what, and how often the range held it."""
        moving = int(self.moving.sum())
        return (f"upper face generated ({moving} of {len(self.names)} brow/eye/cheek channels sampled from a model "
                f"fitted to the subject's training frames, the rest at their median; seed {seed}); "
                f"{int(held.sum())} of {len(held)} frames have a channel held at its trained range")  # fmt: skip


def upper_face_channels(names: list[str]) -> list[int]:
    """Indices of the upper-face channels (eyes, brows, cheeks) in ``names``."""
    return [j for j, name in enumerate(names) if name.startswith(UPPER_FACE_PREFIXES)]


def slow_features(values: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(basis [k, k], unmix [k, k], mean squared step [k]) of the latent axes in which both the covariance
    of ``values`` [N, k] and the mean squared ``steps`` [M, k] are diagonal, each latent with unit variance.

    unmix = V^T with V^T C V = I and V^T S V = diag(λ) (C: covariance, S: step second moment), so
    z = unmix (x - mean) has Cov z = I and E[Δz Δz^T] = diag(λ); basis = unmix^{-1} maps back.
    A ridge of 1e-6 of the mean variance keeps C invertible when two channels are nearly collinear.
    """
    cov = np.cov(values, rowvar=False, bias=True).reshape(values.shape[1], values.shape[1])
    cov = cov + 1e-6 * max(float(np.trace(cov)) / len(cov), 1e-12) * np.eye(len(cov))
    second = steps.T @ steps / max(len(steps), 1)
    lam, vecs = eigh(second, cov)
    return np.linalg.inv(vecs.T), vecs.T, np.maximum(lam, 0.0)


def fit_idle_motion(expression: np.ndarray, names: list[str], train_ids: np.ndarray,
                    config: IdleMotionConfig = IdleMotionConfig()) -> IdleMotionModel:  # fmt: skip
    """The upper-face idle model of a subject: ``expression`` [N, Ke] tracked per frame, ``train_ids`` the
    frames the avatar trained on (the only ones learned from)."""
    names = list(names)
    upper = upper_face_channels(names)
    ids = np.asarray(train_ids, dtype=np.int64)
    expression = np.asarray(expression, np.float64)
    if not upper or len(ids) == 0:
        return IdleMotionModel(tuple(names[j] for j in upper), np.zeros(len(upper)), np.zeros(len(upper), bool), None)
    trained = expression[ids][:, upper]
    median = np.median(trained, axis=0)
    moving = trained.std(axis=0) >= config.still_std
    model = IdleMotionModel(tuple(names[j] for j in upper), median, moving, None)
    if not moving.any():
        return model
    runs = [r for r in consecutive_runs(ids) if len(r) >= 3]
    total = sum(len(r) for r in runs)
    if total < config.min_frames:
        raise Avatar3DError(f"--idle generated: the avatar has only {total} consecutive training frames; the idle "
                            f"model needs at least {config.min_frames}; use --idle subject or static")  # fmt: skip
    cols = [upper[j] for j in np.flatnonzero(moving)]
    xs = [expression[r][:, cols] for r in runs]
    values = np.concatenate(xs)
    steps = np.concatenate([np.diff(x, axis=0) for x in xs])
    basis, unmix, step_ms = slow_features(values, steps)
    phi1, phi2, sigma = critically_damped(np.ones(len(cols)), step_ms, config.max_radius)
    lo, hi = RANGE_PERCENTILES
    process = StationaryAR2(
        mean=values.mean(axis=0), phi1=phi1, phi2=phi2, sigma=sigma,
        low=np.percentile(trained[:, moving], lo, axis=0), high=np.percentile(trained[:, moving], hi, axis=0),
        max_step=np.abs(steps).max(axis=0), starts=np.concatenate([np.stack([x[:-1], x[1:]], axis=1) for x in xs]),
        basis=basis, unmix=unmix)  # fmt: skip
    return IdleMotionModel(model.names, median, moving, process)


def generated_idle(expression: np.ndarray, names: list[str], train_ids: np.ndarray, n: int,
                   seed: int) -> tuple[dict[str, np.ndarray], str]:  # fmt: skip
    """``n`` frames of sampled upper-face motion as {channel name: [n] float32} and a log line."""
    model = fit_idle_motion(expression, names, train_ids)
    values, held = model.sample(n, seed)
    return {name: values[:, j] for j, name in enumerate(model.names)}, model.describe(seed, held)
