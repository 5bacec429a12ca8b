"""Gauss-Newton / Levenberg-Marquardt solver for the clip-wide landmark fit (the tracker's engine).

Why a second-order solver with hand-written Jacobians: from 2D landmarks a face's depth
and its rotation amplitude trade off almost exactly, so first-order methods crawl along
that valley (the old fit needed ~1000 full-batch Adam + L-BFGS evaluations).  The problem
has a sparse structure that Gauss-Newton exploits:

* per frame a small block (pose 6 + expression Ke) that sees only its own landmarks;
* a few global parameters (identity, log focal, log depth scale) shared by all frames;
* temporal smoothness coupling only neighbouring frames (second differences of the pose,
  first differences of the expression).

Two stages use that: (1) on a few keyframes (spread over the head poses), globals and
per-frame blocks are solved jointly with the Schur complement on the global block (a
small bundle adjustment: the depth / rotation valley is resolved in a handful of steps);
(2) with the globals fixed, all frames are solved together with the smoothness terms,
each frame's expression block is eliminated, the pose system left (second differences
couple frames i-2..i+2) is block-tridiagonal over frame pairs and solved by block cyclic
reduction; the weak expression smoothness enters that solve by its diagonal only and a
few preconditioned conjugate-gradient iterations restore its exact coupling.  The robust
(Cauchy) loss is handled by iteratively reweighted least squares, the expression bounds
[0, 1] by a primal active set (weights the step would carry across a bound are held
there and the step re-solved).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch

from avatar3d.rotation import so3_exp as rodrigues  # axis-angle [...,3] -> [...,3,3]

POSE = 6  # axis-angle (rad) + translation (cm) per frame


def _skew(v: torch.Tensor) -> torch.Tensor:
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*v.shape[:-1], 3, 3)


def left_jacobian(omega: torch.Tensor) -> torch.Tensor:
    """SO(3) left Jacobian [...,3,3]: exp(omega + d) ~= exp(J d) exp(omega) (series near zero)."""
    theta2 = (omega * omega).sum(-1)[..., None, None]
    theta = torch.sqrt(theta2)
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    safe = torch.sqrt(safe2)
    a = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(safe)) / safe2)
    b = torch.where(small, 1.0 / 6.0 - theta2 / 120.0, (safe - torch.sin(safe)) / (safe2 * safe))
    k = _skew(omega)
    return torch.eye(3, dtype=omega.dtype) + a * k + b * (k @ k)


@dataclass
class Problem:
    """Everything fixed during a fit: targets, weights, model bases, camera centre."""

    target: torch.Tensor  # [N,L,2] pixels (0 where invalid)
    frame_w: torch.Tensor  # [N] 1 valid / 0 no face
    point_w: torch.Tensor  # [L] normalised landmark weights (sum 1)
    mean: torch.Tensor  # [L,3]
    id_basis: torch.Tensor  # [Ki,L,3]
    exp_basis: torch.Tensor  # [Ke,L,3]
    centre: tuple[float, float]
    focal0: float
    base_rotation: torch.Tensor  # [3,3]: frame rotations are exp(omega) @ base (omega stays far from pi)
    depth_ref: float  # metres: translation unknowns are scaled by it to be ~centimetres
    cauchy2: float  # squared robust scale (px^2)
    identity_prior: float  # per frame, on the coefficients
    focal_prior: float  # per frame, on log(focal / focal0)
    depth_prior: float  # per frame, on log(depth scale)
    expression_l1: float | torch.Tensor  # per frame and weight: a scalar or one per channel [Ke]
    pose_smoothness: float
    expression_smoothness: float
    expression_l2: float | torch.Tensor = 0.0  # per frame, on the squared weight: a scalar or [Ke]
    expression_centre: float | torch.Tensor = 0.0  # [Ke] or scalar: the L2 prior pulls weights towards it
    pcg_iterations: int = 8  # per step, for the exact smoothness coupling
    chunk: int = 256  # frames per Jacobian batch (bounds memory on long clips)

    @property
    def n_exp(self) -> int:
        return int(self.exp_basis.shape[0])

    @property
    def n_id(self) -> int:
        return int(self.id_basis.shape[0])

    def expression_prior(self, expression: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        """Cost, gradient [n,Ke] and Hessian diagonal [Ke] of the L1 + L2 priors on expression weights [n,Ke]
        (the weights are >= 0, so L1 is linear)."""
        l1 = torch.as_tensor(self.expression_l1, dtype=expression.dtype)
        l2 = torch.as_tensor(self.expression_l2, dtype=expression.dtype)
        d = expression - torch.as_tensor(self.expression_centre, dtype=expression.dtype)
        cost = float((expression * l1).sum() + (d * d * l2).sum())
        grad = l1 + 2.0 * l2 * d
        return cost, grad, (2.0 * l2).expand(expression.shape[1]).clone()


@dataclass
class State:
    """The unknowns: per-frame pose / expression, clip-wide identity, log focal, log depth."""

    omega: torch.Tensor  # [N,3] axis-angle, relative to Problem.base_rotation
    trans: torch.Tensor  # [N,3] (x/z, y/z, log z) * 100 * depth_ref: ~cm, and a focal change is a straight line
    expression: torch.Tensor  # [N,Ke] in [0,1]
    identity: torch.Tensor  # [Ki]
    log_focal: float
    log_depth: float

    def copy(self) -> "State":
        return State(self.omega.clone(), self.trans.clone(), self.expression.clone(), self.identity.clone(),
                     self.log_focal, self.log_depth)

    def take(self, idx: torch.Tensor) -> "State":
        return State(self.omega[idx].clone(), self.trans[idx].clone(), self.expression[idx].clone(),
                     self.identity.clone(), self.log_focal, self.log_depth)


def _shape(problem: Problem, state: State, sl: slice) -> torch.Tensor:
    """Unscaled model landmarks [n,L,3] for frames ``sl`` (identity + expression)."""
    base = problem.mean + torch.einsum("k,klc->lc", state.identity, problem.id_basis)
    return base + torch.einsum("ne,elc->nlc", state.expression[sl], problem.exp_basis)


def rotations(problem: Problem, omega: torch.Tensor) -> torch.Tensor:
    """[n,3,3] head -> camera rotations."""
    return rodrigues(omega) @ problem.base_rotation


def translations(problem: Problem, trans: torch.Tensor) -> torch.Tensor:
    """[n,3] head -> camera translations (metres) from the scaled (x/z, y/z, log z) unknowns."""
    q = trans / (100.0 * problem.depth_ref)
    z = torch.exp(q[:, 2:3])
    return torch.cat([q[:, :2] * z, z], 1)


def project(problem: Problem, state: State, sl: slice = slice(None)) -> torch.Tensor:
    """[n,L,2] pixel positions of the model landmarks in frames ``sl``."""
    shape = _shape(problem, state, sl)
    shape = shape * torch.tensor([1.0, 1.0, float(np.exp(state.log_depth))], dtype=shape.dtype)
    rot = rotations(problem, state.omega[sl])
    cam = shape @ rot.transpose(1, 2) + translations(problem, state.trans[sl])[:, None, :]
    f = problem.focal0 * float(np.exp(state.log_focal))
    z = cam[..., 2].clamp_min(1e-3)
    return torch.stack([f * cam[..., 0] / z + problem.centre[0], f * cam[..., 1] / z + problem.centre[1]], -1)


def data_costs(problem: Problem, state: State) -> torch.Tensor:
    """[n] robust landmark cost per frame (weighted Cauchy, 0 for frames without a face)."""
    out = []
    n = len(state.omega)
    for start in range(0, n, problem.chunk):
        sl = slice(start, min(n, start + problem.chunk))
        target, fw = problem.target[sl], problem.frame_w[sl]
        r2 = ((project(problem, state, sl) - target) ** 2).sum(-1)
        out.append((torch.log1p(r2 / problem.cauchy2) * problem.point_w).sum(-1) * fw)
    return torch.cat(out)


def _linearise(problem: Problem, state: State, sl: slice, target: torch.Tensor, fw: torch.Tensor,
               with_global: bool) -> dict[str, torch.Tensor]:
    """IRLS normal equations of the data term for frames ``sl``: per-frame blocks (and global ones).

    Computed in float32 (twice as fast; pixels keep ~1e-4 px precision), returned in the state's dtype.
    """
    out_dtype = state.omega.dtype
    dtype = torch.float32
    problem = Problem(**{**problem.__dict__, "mean": problem.mean.to(dtype), "id_basis": problem.id_basis.to(dtype),
                         "exp_basis": problem.exp_basis.to(dtype), "point_w": problem.point_w.to(dtype),
                         "base_rotation": problem.base_rotation.to(dtype)})
    state = State(state.omega[sl].to(dtype), state.trans[sl].to(dtype), state.expression[sl].to(dtype),
                  state.identity.to(dtype), state.log_focal, state.log_depth)
    target, fw = target.to(dtype), fw.to(dtype)
    sl = slice(None)
    depth = float(np.exp(state.log_depth))
    f = problem.focal0 * float(np.exp(state.log_focal))
    scale = torch.tensor([1.0, 1.0, depth], dtype=dtype)
    shape0 = _shape(problem, state, sl)  # [n,L,3] unscaled
    shape = shape0 * scale
    omega = state.omega[sl]
    rot = rotations(problem, omega)  # [n,3,3]
    rx = shape @ rot.transpose(1, 2)  # R X
    trans = translations(problem, state.trans[sl])
    cam = rx + trans[:, None, :]
    z = cam[..., 2].clamp_min(1e-3)
    inv_z = 1.0 / z
    u = cam[..., 0] * inv_z
    v = cam[..., 1] * inv_z
    proj = torch.stack([f * u + problem.centre[0], f * v + problem.centre[1]], -1)
    res = proj - target  # [n,L,2]
    r2 = (res * res).sum(-1)
    # Cauchy IRLS: cost c log(1 + r2/s2); gradient 2c r J / (s2 + r2); Hessian ~ 2c J^T J / (s2 + r2)
    w = 2.0 * problem.point_w / (problem.cauchy2 + r2) * fw[:, None]  # [n,L]
    zero = torch.zeros_like(u)
    a_mat = (f * inv_z)[..., None, None] * torch.stack(
        [torch.stack([torch.ones_like(u), zero, -u], -1), torch.stack([zero, torch.ones_like(u), -v], -1)], -2)
    ar = a_mat @ rot[:, None]  # [n,L,2,3] d(uv)/d(canonical point)
    j_rot = -(a_mat @ _skew(rx)) @ left_jacobian(omega)[:, None]  # [n,L,2,3]
    k = 1.0 / (100.0 * problem.depth_ref)
    tz = (trans[:, 2] * k)[:, None, None]
    j_trans = torch.stack([a_mat[..., 0] * tz, a_mat[..., 1] * tz, (a_mat @ trans[:, None, :, None])[..., 0] * k], -1)
    j_exp = torch.einsum("nlic,elc->nlie", ar * scale, problem.exp_basis)  # [n,L,2,Ke]
    j_local = torch.cat([j_rot, j_trans, j_exp], -1)  # [n,L,2,6+Ke]
    nl = j_local.shape[-1]
    jw = (j_local * w[..., None, None]).reshape(len(w), -1, nl)
    jl = j_local.reshape(len(w), -1, nl)
    rr = res.reshape(len(w), -1, 1)
    out = {"h_ff": jw.transpose(1, 2) @ jl, "g_f": (jw.transpose(1, 2) @ rr)[..., 0]}
    if with_global:
        j_id = torch.einsum("nlic,klc->nlik", ar * scale, problem.id_basis)
        j_depth = ar[..., 2] * (depth * shape0[..., 2])[..., None]
        j_focal = proj - torch.tensor(problem.centre, dtype=dtype)
        j_global = torch.cat([j_id, j_depth[..., None], j_focal[..., None]], -1).reshape(len(w), -1, problem.n_id + 2)
        out["h_fg"] = jw.transpose(1, 2) @ j_global
        jgw = j_global * w.repeat_interleave(2, dim=1)[..., None]
        out["h_gg"] = (jgw.transpose(1, 2) @ j_global).sum(0)
        out["g_g"] = (jgw.transpose(1, 2) @ rr)[..., 0].sum(0)
    return {k: v.to(out_dtype) for k, v in out.items()}


def _bounded_step(expression: torch.Tensor, grad_e: torch.Tensor, solve, max_rounds: int = 10):
    """A damped Gauss-Newton step that keeps the expression weights in [0, 1] (primal active set).

    ``solve(held, move)`` returns (step, model gradient of the expression weights at the
    step) with the ``held`` weights [n,Ke] moved by ``move`` onto their bound and the rest
    free.  Weights the step carries across a bound join the held set; once the step is
    feasible, held weights whose multiplier says "move inwards" are released.  Clipping an
    unconstrained Newton step instead is not a descent step, and the fit crawls.
    """
    held = ((expression <= 1e-9) & (grad_e > 0)) | ((expression >= 1.0 - 1e-9) & (grad_e < 0))
    bound = (held & (expression > 0.5)).to(expression.dtype)
    for round_ in range(max_rounds):
        move = torch.where(held, bound - expression, torch.zeros_like(expression))
        step, lam = solve(held, move)
        new = expression + step[0][:, POSE:] if isinstance(step, tuple) else expression + step[:, POSE:]
        low, high = (~held) & (new < -1e-7), (~held) & (new > 1.0 + 1e-7)
        if low.any() or high.any():
            held = held | low | high
            bound = torch.where(low, torch.zeros_like(bound), torch.where(high, torch.ones_like(bound), bound))
            continue
        release = held & (((bound == 0) & (lam < -1e-10)) | ((bound == 1) & (lam > 1e-10)))
        if not release.any():
            break
        # release one weight per frame (the largest wrong-way multiplier): releasing all at once cycles
        score = torch.where(release, lam.abs(), torch.full_like(lam, -1.0))
        pick = torch.zeros_like(release)
        pick.scatter_(1, score.argmax(1, keepdim=True), True)
        held = held & ~(pick & release)
    return step, held


def _hold(a_ff: torch.Tensor, g_f: torch.Tensor, held: torch.Tensor, move: torch.Tensor):
    """Per-frame blocks and gradient with the held weights pinned (moved by ``move``, then stiff)."""
    n = len(a_ff)
    move_full = torch.cat([torch.zeros(n, POSE, dtype=move.dtype), move], 1)
    held_full = torch.cat([torch.zeros(n, POSE, dtype=torch.bool), held], 1)
    grad = torch.where(held_full, torch.zeros_like(g_f), g_f + (a_ff @ move_full[..., None])[..., 0])
    stiff = torch.where(held_full, 1e8 * (torch.diagonal(a_ff, dim1=1, dim2=2) + 1.0), torch.zeros_like(g_f))
    return a_ff + torch.diag_embed(stiff), grad, move_full, held_full


def solve_keyframes(problem: Problem, state: State, frames: torch.Tensor, iterations: int,
                    tolerance: float = 1e-6) -> State:
    """Joint fit of globals and per-frame blocks on ``frames`` (no smoothness: keyframes are far apart).

    Levenberg-Marquardt; the per-frame blocks are eliminated (Schur complement) so each step
    solves only the (Ki + 2)-sized global system.
    """
    target, fw = problem.target[frames], problem.frame_w[frames]
    ki = problem.n_id
    dtype = state.omega.dtype
    prior_w = problem.identity_prior * float(fw.sum())
    focal_w = problem.focal_prior * float(fw.sum())
    depth_w = problem.depth_prior * float(fw.sum())
    sub = Problem(**{**problem.__dict__, "target": target, "frame_w": fw})

    def cost(s: State) -> float:
        data = data_costs(sub, s).sum()
        return float(data + prior_w * (s.identity ** 2).sum() + focal_w * s.log_focal ** 2
                     + depth_w * s.log_depth ** 2) + problem.expression_prior(s.expression)[0]

    current = cost(state)
    mu = 1e-3
    for _ in range(iterations):
        lin = _linearise(problem, state, slice(None), target, fw, with_global=True)
        h_ff, g_f, h_fg = lin["h_ff"].clone(), lin["g_f"].clone(), lin["h_fg"]
        h_gg, g_g = lin["h_gg"].clone(), lin["g_g"].clone()
        _, prior_g, prior_h = problem.expression_prior(state.expression)
        g_f[:, POSE:] += prior_g
        h_ff[:, POSE:, POSE:] += torch.diag(prior_h)
        h_gg[:ki, :ki] += 2.0 * prior_w * torch.eye(ki, dtype=dtype)
        g_g[:ki] += 2.0 * prior_w * state.identity
        h_gg[ki + 1, ki + 1] += 2.0 * focal_w
        g_g[ki + 1] += 2.0 * focal_w * state.log_focal
        h_gg[ki, ki] += 2.0 * depth_w
        g_g[ki] += 2.0 * depth_w * state.log_depth

        def propose(mu: float) -> State:
            a_ff = h_ff + torch.diag_embed(mu * torch.diagonal(h_ff, dim1=1, dim2=2) + 1e-9)
            a_gg = h_gg + torch.diag(mu * torch.diagonal(h_gg) + 1e-9)

            def solve(held: torch.Tensor, move: torch.Tensor):
                a, grad, move_full, held_full = _hold(a_ff, g_f, held, move)
                b_fg = torch.where(held_full[..., None], torch.zeros_like(h_fg), h_fg)
                grad_g = g_g + (h_fg.transpose(1, 2) @ move_full[..., None])[..., 0].sum(0)
                chol = torch.linalg.cholesky(a)
                x = torch.cholesky_solve(b_fg, chol)  # [k,nl,ng]
                y = torch.cholesky_solve(grad[..., None], chol)[..., 0]  # [k,nl]
                schur = a_gg - (b_fg.transpose(1, 2) @ x).sum(0)
                rhs = grad_g - (b_fg.transpose(1, 2) @ y[..., None])[..., 0].sum(0)
                d_g = -torch.linalg.solve(schur, rhs)
                d_f = -y - x @ d_g + move_full
                lam = (g_f + (a_ff @ d_f[..., None])[..., 0] + h_fg @ d_g)[:, POSE:]
                return (d_f, d_g), lam

            (d_f, d_g), _ = _bounded_step(state.expression, g_f[:, POSE:], solve)
            return _apply(state, d_f, d_g)

        state, current, mu, improved, converged = _damped_step(state, current, mu, propose, cost, tolerance)
        if not improved or converged:
            break
    return state


def _damped_step(state: State, current: float, mu: float, propose, cost, tolerance: float):  # type: ignore[no-untyped-def]
    """One Levenberg–Marquardt iteration: try ``propose(mu)`` with growing damping until the cost falls.

    Returns (state, cost, mu, improved, converged); a failed try multiplies ``mu`` by 4, a
    success divides it by 3, and a relative decrease below ``tolerance`` counts as converged.
    """
    for _attempt in range(10):
        trial = propose(mu)
        new = cost(trial)
        if new < current:
            return trial, new, max(mu / 3.0, 1e-7), True, (current - new) < tolerance * abs(current)
        mu *= 4.0
    return state, current, mu, False, False


def _apply(state: State, d_f: torch.Tensor, d_g: torch.Tensor | None) -> State:
    out = state.copy()
    out.omega = out.omega + d_f[:, :3]
    out.trans = out.trans + d_f[:, 3:POSE]
    out.expression = (out.expression + d_f[:, POSE:]).clamp(0.0, 1.0)
    if d_g is not None:
        ki = len(out.identity)
        out.identity = out.identity + d_g[:ki]
        out.log_depth = out.log_depth + float(d_g[ki])
        out.log_focal = out.log_focal + float(d_g[ki + 1])
    return out


def _difference_gram(n: int, order: int) -> list[np.ndarray]:
    """Diagonals 0..order of D^T D for the ``order``-th difference operator D on n frames."""
    if n <= order:
        return [np.zeros(n - k) for k in range(order + 1)]
    coef = [1.0, -1.0] if order == 1 else [1.0, -2.0, 1.0]
    d = scipy.sparse.diags(coef, list(range(order + 1)), shape=(n - order, n))
    gram = (d.T @ d).todia()
    return [np.asarray(gram.diagonal(k)) for k in range(order + 1)]


def _smoothness(problem: Problem, state: State) -> tuple[float, np.ndarray]:
    """Cost and gradient [N, 6+Ke] of the temporal smoothness terms."""
    pose = torch.cat([state.omega, state.trans], 1).numpy()
    expr = state.expression.numpy()
    grad = np.zeros((len(pose), POSE + expr.shape[1]))
    cost = 0.0
    if len(pose) >= 3:
        acc = pose[2:] - 2 * pose[1:-1] + pose[:-2]
        cost += problem.pose_smoothness * float((acc ** 2).sum())
        g = np.zeros_like(pose)
        g[2:] += acc
        g[1:-1] -= 2 * acc
        g[:-2] += acc
        grad[:, :POSE] = 2 * problem.pose_smoothness * g
        vel = expr[1:] - expr[:-1]
        cost += problem.expression_smoothness * float((vel ** 2).sum())
        g = np.zeros_like(expr)
        g[1:] += vel
        g[:-1] -= vel
        grad[:, POSE:] = 2 * problem.expression_smoothness * g
    return cost, grad


def solve_block_tridiagonal(diag: torch.Tensor, upper: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve a symmetric positive definite block-tridiagonal system by block cyclic reduction.

    ``diag`` [m,B,B] diagonal blocks, ``upper`` [m-1,B,B] blocks (b, b+1), ``rhs`` [m,B].
    Each level eliminates the odd blocks in one batched step (log2 m levels), so the
    Python overhead does not grow with the clip; torch (one thread) rather than LAPACK's
    banded solver because, next to torch, scipy's threaded OpenBLAS collapsed ~100x on
    two shared cores.
    """
    m, size = diag.shape[0], diag.shape[1]
    if m == 1:
        return torch.cholesky_solve(rhs[..., None], torch.linalg.cholesky(diag))[..., 0]
    if m % 2:  # a decoupled identity block keeps the count even
        diag = torch.cat([diag, torch.eye(size, dtype=diag.dtype)[None]])
        upper = torch.cat([upper, torch.zeros(1, size, size, dtype=diag.dtype)])
        rhs = torch.cat([rhs, torch.zeros(1, size, dtype=rhs.dtype)])
    mp = len(diag)
    zero = torch.zeros(1, size, size, dtype=diag.dtype)
    up_full = torch.cat([upper, zero])  # U_k for k = 0..mp-1 (the last is zero)
    d_odd, r_odd = diag[1::2], rhs[1::2]
    left_odd = up_full[0::2].transpose(1, 2)  # L_k = U_{k-1}^T for odd k
    right_odd = up_full[1::2]  # U_k for odd k
    chol = torch.linalg.cholesky(d_odd)
    solved = torch.cholesky_solve(torch.cat([left_odd, right_odd, r_odd[..., None]], 2), chol)
    inv_left, inv_right, inv_r = solved[..., :size], solved[..., size:2 * size], solved[..., 2 * size]
    u_even = up_full[0::2]  # U_j (j even): to the odd block j+1
    u_prev = torch.cat([zero, up_full[1::2][:-1]])  # U_{j-1} (j even): from the odd block j-1
    inv_right_prev = torch.cat([zero, inv_right[:-1]])
    inv_r_prev = torch.cat([torch.zeros(1, size, dtype=rhs.dtype), inv_r[:-1]])
    new_diag = diag[0::2] - u_even @ inv_left - u_prev.transpose(1, 2) @ inv_right_prev
    new_rhs = rhs[0::2] - (u_even @ inv_r[..., None])[..., 0] - (u_prev.transpose(1, 2) @ inv_r_prev[..., None])[..., 0]
    new_upper = -(u_even[:-1] @ inv_right[:-1])  # couples even j with j+2 through odd j+1
    x_even = solve_block_tridiagonal(new_diag, new_upper, new_rhs)
    x_next = torch.cat([x_even[1:], torch.zeros(1, size, dtype=rhs.dtype)])
    x_odd = inv_r - (inv_left @ x_even[..., None])[..., 0] - (inv_right @ x_next[..., None])[..., 0]
    out = torch.stack([x_even, x_odd], 1).reshape(mp, size)
    return out[:m]


def _pair_blocks(h: torch.Tensor, coef: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame blocks [n,nl,nl] + couplings -> block-tridiagonal form over frame pairs (2 nl blocks)."""
    n, nl, _ = h.shape
    if n % 2:  # a dummy frame, decoupled, keeps the pairs whole
        h = torch.cat([h, torch.eye(nl, dtype=h.dtype)[None]])
        coef = torch.cat([coef, torch.zeros(1, 3, nl, dtype=coef.dtype)])
        n += 1
    m = n // 2
    diag = torch.zeros(m, 2 * nl, 2 * nl, dtype=h.dtype)
    diag[:, :nl, :nl] = h[0::2]
    diag[:, nl:, nl:] = h[1::2]
    cross = torch.diag_embed(coef[0::2, 1])
    diag[:, :nl, nl:] = cross
    diag[:, nl:, :nl] = cross
    upper = torch.zeros(max(m - 1, 0), 2 * nl, 2 * nl, dtype=h.dtype)
    if m > 1:
        upper[:, :nl, :nl] = torch.diag_embed(coef[0:-2:2, 2])  # 2b -> 2b+2
        upper[:, nl:, :nl] = torch.diag_embed(coef[1:-2:2, 1])  # 2b+1 -> 2b+2
        upper[:, nl:, nl:] = torch.diag_embed(coef[1:-2:2, 2])  # 2b+1 -> 2b+3
    return diag, upper


def _pose_coupling(problem: Problem, n: int) -> torch.Tensor:
    """[n,3,6] Hessian of the pose smoothness: entry (i,k,d) couples pose unknown d of frame i with frame i+k."""
    coef = torch.zeros(n, 3, POSE, dtype=torch.float64)
    if n >= 3:
        gram = _difference_gram(n, 2)
        for k in range(3):
            coef[:n - k, k] = 2 * problem.pose_smoothness * torch.from_numpy(gram[k])[:, None]
    return coef


def _expression_smoothness_diag(problem: Problem, n: int, ke: int) -> torch.Tensor:
    """[n,Ke] diagonal of the expression smoothness Hessian (its weak off-diagonal part is left out)."""
    out = torch.zeros(n, ke, dtype=torch.float64)
    if n >= 3:
        out += 2 * problem.expression_smoothness * torch.from_numpy(_difference_gram(n, 1)[0])[:, None]
    return out


def _expression_off_diagonal(problem: Problem, n: int) -> torch.Tensor:
    """[n-1] coupling of expression weights between frames i and i+1 (first-difference smoothness)."""
    if n < 3:
        return torch.zeros(max(n - 1, 0), dtype=torch.float64)
    return 2 * problem.expression_smoothness * torch.from_numpy(_difference_gram(n, 1)[1])


def _full_product(d: torch.Tensor, a_ff: torch.Tensor, coef: torch.Tensor, exp_off: torch.Tensor) -> torch.Tensor:
    """The exact damped normal matrix times ``d`` [n,nl]: per-frame blocks + all smoothness couplings."""
    out = (a_ff @ d[..., None])[..., 0]
    pose = d[:, :POSE]
    for k in (1, 2):
        if len(d) > k:
            out[:-k, :POSE] += coef[:-k, k] * pose[k:]
            out[k:, :POSE] += coef[:-k, k] * pose[:-k]
    if len(d) > 1:
        out[:-1, POSE:] += exp_off[:, None] * d[1:, POSE:]
        out[1:, POSE:] += exp_off[:, None] * d[:-1, POSE:]
    return out


def _refine(step: torch.Tensor, held: torch.Tensor, g: torch.Tensor, a_ff: torch.Tensor, coef: torch.Tensor,
            exp_off: torch.Tensor, precondition, iterations: int) -> torch.Tensor:
    """Preconditioned conjugate gradients on the exact step equations (held weights stay put).

    The preconditioner (the block solve with the expression smoothness reduced to its
    diagonal) is exact but for that weak coupling, so a few iterations recover the modes
    it misses -- expressions the landmarks barely see, set by their neighbours.
    """
    n = len(step)
    free = torch.cat([torch.ones(n, POSE, dtype=torch.bool), ~held], 1)

    def product(d: torch.Tensor) -> torch.Tensor:
        return torch.where(free, _full_product(torch.where(free, d, torch.zeros_like(d)), a_ff, coef, exp_off),
                           torch.zeros_like(d))

    r = torch.where(free, -g - _full_product(step, a_ff, coef, exp_off), torch.zeros_like(g))
    z = precondition(r)
    p = z.clone()
    rz = float((r * z).sum())
    x = step.clone()
    for _ in range(iterations):
        if rz <= 1e-30:
            break
        q = product(p)
        alpha = rz / float((p * q).sum())
        x = x + alpha * p
        r = r - alpha * q
        z = precondition(r)
        rz_new = float((r * z).sum())
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x


def solve_sequence(problem: Problem, state: State, iterations: int, tolerance: float = 1e-6) -> State:
    """All frames, globals fixed, with the smoothness terms: Levenberg-Marquardt.

    Each frame's expression block is eliminated (batched Cholesky); the remaining pose
    system, coupled by the second-difference smoothness, is block-tridiagonal over pairs of
    frames and solved by block Cholesky.  The expression smoothness enters the step with its
    diagonal only (it is weak; its gradient is exact, so the fixed point is the true optimum).
    """
    n = len(state.omega)
    ke = problem.n_exp
    dtype = state.omega.dtype
    coef = _pose_coupling(problem, n).to(dtype)
    exp_diag = _expression_smoothness_diag(problem, n, ke).to(dtype)
    smooth_diag = torch.cat([coef[:, 0], exp_diag], 1)
    exp_off = _expression_off_diagonal(problem, n).to(dtype)

    def cost(s: State) -> float:
        return (float(data_costs(problem, s).sum()) + problem.expression_prior(s.expression)[0]
                + _smoothness(problem, s)[0])

    current = cost(state)
    mu = 1e-3
    for _ in range(iterations):
        h = torch.empty(n, POSE + ke, POSE + ke, dtype=dtype)
        g = torch.empty(n, POSE + ke, dtype=dtype)
        for start in range(0, n, problem.chunk):
            sl = slice(start, min(n, start + problem.chunk))
            lin = _linearise(problem, state, sl, problem.target[sl], problem.frame_w[sl], with_global=False)
            h[sl], g[sl] = lin["h_ff"], lin["g_f"]
        _, prior_g, prior_h = problem.expression_prior(state.expression)
        g[:, POSE:] += prior_g
        g += torch.from_numpy(_smoothness(problem, state)[1]).to(dtype)
        h[:, POSE:, POSE:] += torch.diag(prior_h)
        base = torch.diagonal(h, dim1=1, dim2=2) + smooth_diag

        def propose(mu: float) -> State:
            a_ff = h + torch.diag_embed(smooth_diag + mu * base + 1e-9)

            def factor(held: torch.Tensor):
                a, _, _, held_full = _hold(a_ff, g, held, torch.zeros_like(state.expression))
                a_pp, a_pe, a_ee = a[:, :POSE, :POSE], a[:, :POSE, POSE:], a[:, POSE:, POSE:]
                chol = torch.linalg.cholesky(a_ee)
                x = torch.cholesky_solve(a_pe.transpose(1, 2), chol)  # [n,Ke,6]
                blocks, upper = _pair_blocks(a_pp - a_pe @ x, coef)
                return chol, x, a_pe, blocks, upper, held_full

            def precondition(f, grad: torch.Tensor) -> torch.Tensor:
                """Solve with the expression smoothness reduced to its diagonal: -(A_approx)^-1 grad."""
                chol, x, a_pe, blocks, upper, held_full = f
                grad = torch.where(held_full, torch.zeros_like(grad), grad)
                y = torch.cholesky_solve(grad[:, POSE:, None], chol)[..., 0]
                rhs = grad[:, :POSE] - (a_pe @ y[..., None])[..., 0]
                rhs = torch.cat([rhs, torch.zeros(len(blocks) * 2 - n, POSE, dtype=dtype)]).reshape(len(blocks), -1)
                d_p = -solve_block_tridiagonal(blocks, upper, rhs).reshape(-1, POSE)[:n]
                return torch.cat([d_p, -y - (x @ d_p[..., None])[..., 0]], 1)

            def solve(held: torch.Tensor, move: torch.Tensor):
                f = factor(held)
                move_full = torch.cat([torch.zeros(n, POSE, dtype=dtype), move], 1)
                step = precondition(f, g + (a_ff @ move_full[..., None])[..., 0]) + move_full
                lam = (g + (a_ff @ step[..., None])[..., 0])[:, POSE:]
                return step, lam

            step, held = _bounded_step(state.expression, g[:, POSE:], solve)
            factored = factor(held)
            step = _refine(step, held, g, a_ff, coef, exp_off, lambda r: precondition(factored, -r),
                           problem.pcg_iterations)
            return _apply(state, step, None)

        state, current, mu, improved, converged = _damped_step(state, current, mu, propose, cost, tolerance)
        if not improved or converged:
            break
    return state
