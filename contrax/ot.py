"""Regularised optimal transport couplings as hard-negative distributions (Jiang, Ishwar,
Aeron 2023, arXiv 2111.03169).

Pipeline, one function per step (as ott-jax separates geometry, problem and solver):

    Pairs (contrax.pairs) -> global 2B x 2B cost with self/positive pairs excluded (`batch_problem`)
                          -> coupling pi (entropic via ott-jax Sinkhorn, or quadratic)
                          -> row-stochastic negative weights w = pi / rowsum(pi) = 2B pi
    (`batch_coupling`, `quadratic_batch_coupling`: a `Coupling` of matrix, weights, diagnostics)

Entropic OT (Cuturi 2013) with an explicit *absolute* epsilon:

    pi^eps = argmin_{pi in Pi(a, b)} <C, pi> - eps H(pi),     a = b = 1/(2B),

solved in log space by ott-jax's `Sinkhorn` with a fixed number of iterations
(`min_iterations == max_iterations`, so a jitted train step compiles once and costs the same at
every step). Marginals: `balanced` (both constraints), `semi_relaxed` (the column constraint
dropped, ott's `tau_b = 0`; its solution is exactly HCL's `softmax_j(beta s_ij / t)` with
beta = 2t/eps on the cost C = ||z_i - z_j||^2 = 2 - 2 s_ij), `unbalanced` (both constraints
relaxed by KL penalties, ott's `tau_a = tau_b = tau`, tau = rho / (rho + eps); tau -> 1 is
balanced, tau -> 0 drops the constraint).

Quadratically regularised OT (Blondel, Seguy, Rolet 2018, arXiv 1710.06276; ott-jax lacks it):

    min_{pi in Pi(a, b)} <C, pi> + (gamma/2) ||pi||_F^2,
    pi_ij = [alpha_i + beta_j - C_ij]_+ / gamma,

from the smooth concave dual, solved with optax's L-BFGS: its couplings are sparse, so easy
negatives get exactly zero weight.

Excluded pairs (self, positive) get a large *finite* cost (never `inf`, which turns ott's
arithmetic into NaN), large enough that no optimal coupling uses them (`exclude_pairs`), and
their coupling entries are then set to exactly zero. The weights are the row-normalised
coupling computed in log space, `w_ij = softmax_j((g_j - C_ij)/eps)` over each row's
negatives (`f_i` cancels), so every row sums to 1 even where a row of `pi` underflows. Under
`shard_map`, the problem is built from the `Pairs`' already gathered (device-invariant)
columns: every device solves the global 2B x 2B problem redundantly (Sinkhorn needs whole
rows and columns) and keeps its own rows by a static-shape slice at its device offset, with
no collective of its own; the weights equal the single-device ones on the concatenated batch.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import lineax as lx
import optax
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import implicit_differentiation, sinkhorn

from contrax import _checks
from contrax import pairs as pairs_lib

__all__ = [
    "MARGINALS", "COSTS", "GRADIENTS", "EXCLUSION_MARGIN", "Diagnostics", "pairwise_cost",
    "exclude_pairs", "BatchProblem", "Coupling", "batch_problem", "row_normalised_weights",
    "entropic_coupling", "batch_coupling", "coupling_to_weights", "quadratic_coupling",
    "quadratic_batch_coupling",
]

MARGINALS = ("balanced", "semi_relaxed", "unbalanced")
COSTS = ("sqeuclidean", "exp")
GRADIENTS = ("stop", "implicit", "unroll")
# Excluded pairs cost `max C + n (max C - min C) + EXCLUSION_MARGIN * eps` (see `exclude_pairs`).
EXCLUSION_MARGIN = 100.0


class Diagnostics(NamedTuple):
  """What a coupling solver reports (global quantities, identical on every device).

  row_marginal_error: `sum_i |sum_j pi_ij - a_i|` (L1; the row constraint).
  column_marginal_error: `sum_j |sum_i pi_ij - b_j|` (L1; not a constraint when the column
    marginal is relaxed, reported anyway).
  num_iterations: solver iterations run (the fixed count; 1 for the closed-form semi-relaxed
    solution).
  converged: no NaN and the enforced marginal errors are within `threshold` (for
    `unbalanced`: ott's criterion, the norm of the dual gradient).
  potentials: dual potentials `(f, g)` (entropic) or `(alpha, beta)` (quadratic), `[2B]` each.
  """
  row_marginal_error: jax.Array
  column_marginal_error: jax.Array
  num_iterations: jax.Array
  converged: jax.Array
  potentials: Tuple[jax.Array, jax.Array]


def pairwise_cost(rows: jax.Array, cols: jax.Array, *, cost: str = "sqeuclidean",
                  kappa: float = 1.0) -> jax.Array:
  """Ground cost between row and column embeddings.

  `sqeuclidean`: `C_ij = ||x_i - y_j||^2` (= 2 - 2 s_ij for unit vectors; clipped at 0
  against rounding). `exp`: `C_ij = exp(||x_i - y_j||^2 - kappa)` (v3 of Jiang et al.,
  arXiv 2111.03169); kappa only rescales the cost, so it acts as eps_eff = eps e^kappa.
  """
  _checks.choice("cost", cost, COSTS)
  sq = (jnp.sum(jnp.square(rows), axis=1)[:, None] + jnp.sum(jnp.square(cols), axis=1)[None, :]
        - 2.0 * rows @ cols.T)
  sq = jnp.maximum(sq, 0.0)
  if cost == "exp":
    return jnp.exp(sq - kappa)
  return sq


def exclude_pairs(cost: jax.Array, keep_mask: jax.Array, epsilon: float) -> jax.Array:
  """Replace entries outside `keep_mask` by a finite cost no optimal coupling uses.

      C_excl = max C + n (max C - min C) + 100 eps,   max / min over kept entries,
      n = min(rows, columns).

  A plan that moves mass d over an excluded entry can reroute it along an alternating cycle
  of at most n kept entries added and n - 1 removed, which changes the cost by at most
  d (n max C - (n - 1) min C - C_excl) < 0; so (without regularisation, and whenever the kept
  entries admit a feasible plan) the optimum never uses excluded entries. A margin of only
  `100 eps` above `max C` is not enough at small eps: the potentials then grow to route mass
  through excluded entries (which are zeroed afterwards, leaving rows and columns short).
  The `100 eps` term keeps excluded kernel entries e^-100 below the kept ones when all kept
  costs are equal. Capped at a quarter of the dtype's largest value (never `inf`).
  """
  kept_max = jnp.max(jnp.where(keep_mask, cost, -jnp.inf))
  kept_min = jnp.min(jnp.where(keep_mask, cost, jnp.inf))
  n = min(cost.shape)
  big = kept_max + n * (kept_max - kept_min) + EXCLUSION_MARGIN * epsilon
  big = jax.lax.stop_gradient(jnp.minimum(big, jnp.finfo(cost.dtype).max / 4))
  return jnp.where(keep_mask, cost, big)


class BatchProblem(NamedTuple):
  """The global in-batch transport problem (identical on every device).

  cost: `[2B, 2B]` ground cost between the global stacked embeddings (excluded pairs not yet
    set).
  negative_mask: `[2B, 2B]` True on each row's negatives.
  """
  cost: jax.Array
  negative_mask: jax.Array


class Coupling(NamedTuple):
  """An in-batch coupling seen from one device (a pytree).

  matrix: `[2b, 2B]` this device's rows of the coupling pi (zero on self and positive).
  weights: `[2b, 2B]` the row-normalised coupling `pi_ij / sum_k pi_ik`, the negative weights.
  diagnostics: `Diagnostics` of the global solve.
  """
  matrix: jax.Array
  weights: jax.Array
  diagnostics: Diagnostics


def batch_problem(pairs: pairs_lib.Pairs, *, cost: str = "sqeuclidean",
                  kappa: float = 1.0) -> BatchProblem:
  """The global in-batch cost `C_ij = cost(z_i, z_j)` over the stacked columns of `pairs`
  (`pairwise_cost` of `pairs.cols` with itself) and the global negative mask."""
  _checks.choice("cost", cost, COSTS)
  kappa = _checks.in_range("kappa", kappa, -math.inf, math.inf)
  n = pairs.num_global_rows
  if n - 2 < 1:
    raise ValueError("optimal-transport negatives need a global batch of at least 2 images, got "
                     f"{n // 2} (axis_name={pairs.axis_name!r})")
  index = jnp.arange(n)
  negative_mask = ((index[:, None] != index[None, :])
                   & (index[None, :] != (index[:, None] + n // 2) % n))
  return BatchProblem(pairwise_cost(pairs.cols, pairs.cols, cost=cost, kappa=kappa),
                      negative_mask)


def _marginal_errors(pi, a, b):
  return (jnp.sum(jnp.abs(jnp.sum(pi, axis=1) - a)), jnp.sum(jnp.abs(jnp.sum(pi, axis=0) - b)))


def _check_common(epsilon, num_iterations, marginals, gradient, threshold):
  _checks.positive("epsilon", epsilon)
  _checks.positive_int("num_iterations", num_iterations)
  _checks.choice("marginals", marginals, MARGINALS)
  _checks.choice("gradient", gradient, GRADIENTS)
  _checks.positive("threshold", threshold)


def _dense_lu(**_solver_options) -> lx.LU:
  """A lineax LU solver; ott passes CG tolerances (`rtol`, `atol`), which a direct solve ignores."""
  return lx.LU()


def _implicit_diff(cost: jax.Array, marginals: str) -> implicit_differentiation.ImplicitDiff:
  """ott's `ImplicitDiff` with a ridged, dense solve of its linear system.

  The backward pass solves the Jacobian of ott's first-order conditions through a Schur
  complement `S` of size k = min(n, m); ott's default `eps log` preconditioning scales it to
  eigenvalues in [0, 1]. With balanced marginals `S 1 = 0` (the potentials are defined up to
  `(f + c, g - c)`), and coinciding embeddings or small eps add eigenvalues near 0. ott 0.6
  runs lineax's CG on the normal equations (condition number squared) without a ridge, which
  breaks down into 'A linear solver returned non-finite output'. Here:

  - `ridge_kernel = 1/k` (balanced only) solves `(S + (1/k) 1 1^T) x = r`. The right-hand side
    is consistent (weights and coupling are invariant to the shift), so the solution is
    unchanged, with the zero eigenvalue moved to 1.
  - `ridge_identity = 10 u` (u = the dtype's machine epsilon) bounds the condition number by
    about 1/(10 u); it only damps directions that the working precision cannot resolve.
  - a dense LU (k matrix-vector products to build `S`, O(k^3)) instead of CG.
  """
  k = min(cost.shape)
  options = {"ridge_identity": 10.0 * float(jnp.finfo(cost.dtype).eps),
             "ridge_kernel": 1.0 / k if marginals == "balanced" else 0.0,
             "nonsym_solver": _dense_lu}
  # ott makes ImplicitDiff a dataclass inside its register_pytree_node decorator (typed
  # `type -> type`), so mypy does not see the dataclass's __init__ and its fields.
  return implicit_differentiation.ImplicitDiff(solver_kwargs=options)  # type: ignore[call-arg]


def row_normalised_weights(cost: jax.Array, g: jax.Array, epsilon,
                           keep_mask: Optional[jax.Array] = None) -> jax.Array:
  """`w_ij = pi_ij / sum_k pi_ik` for `pi_ij = exp((f_i + g_j - C_ij)/eps)`, in log space:

      w_ij = softmax_j((g_j - C_ij)/eps)   over the kept entries of row i, 0 elsewhere.

  `f_i` cancels, so the rows sum to 1 even when a row of `pi` underflows to zero (a solve
  stopped before convergence at small eps). This is also the coupling after one more exact
  row update of the potentials.
  """
  logits = (g[None, :] - cost) / epsilon
  if keep_mask is None:
    return jax.nn.softmax(logits, axis=1)
  return jax.nn.softmax(jnp.where(keep_mask, logits, -jnp.inf), axis=1)


def _entropic_solve(cost, a, b, *, epsilon, marginals, tau, num_iterations, gradient, threshold,
                    keep_mask) -> Tuple[jax.Array, jax.Array, Diagnostics]:
  """`entropic_coupling`, also returning the row-normalised weights: `(pi, w, diagnostics)`."""
  _check_common(epsilon, num_iterations, marginals, gradient, threshold)
  _checks.rank("cost", cost, 2)
  if marginals == "unbalanced":
    tau = _checks.in_range("tau", tau, 0.0, 1.0, include_low=False)
  if gradient == "stop":
    cost = jax.lax.stop_gradient(cost)
  if keep_mask is not None:
    cost = exclude_pairs(cost, keep_mask, epsilon)
  geom = geometry.Geometry(cost_matrix=cost, epsilon=epsilon)
  if marginals == "semi_relaxed":
    g = jnp.zeros_like(b)
    f = geom.update_potential(jnp.zeros_like(a), g, jnp.log(a), axis=1)
    pi = geom.transport_from_potentials(f, g)
    iterations, solver_converged = jnp.asarray(1), jnp.asarray(True)
  else:
    tau_ab = 1.0 if marginals == "balanced" else tau
    problem = linear_problem.LinearProblem(geom, a, b, tau_a=tau_ab, tau_b=tau_ab)
    solver = sinkhorn.Sinkhorn(
        threshold=threshold, inner_iterations=num_iterations,
        min_iterations=num_iterations, max_iterations=num_iterations,
        implicit_diff=None if gradient == "unroll" else _implicit_diff(cost, marginals))
    out = solver(problem)
    f, g = out.f, out.g
    pi = out.matrix
    # Arrays at run time; ott annotates them `int` and `Optional[bool]`.
    iterations, solver_converged = jnp.asarray(out.n_iters), jnp.asarray(out.converged)
  if keep_mask is not None:
    pi = jnp.where(keep_mask, pi, 0.0)
  weights = row_normalised_weights(cost, g, epsilon, keep_mask)
  row_error, column_error = _marginal_errors(pi, a, b)
  finite = jnp.all(jnp.isfinite(pi))
  if marginals == "balanced":
    converged = finite & (row_error + column_error <= threshold)
  elif marginals == "semi_relaxed":
    converged = finite & (row_error <= threshold)
  else:
    converged = finite & solver_converged
  diagnostics = Diagnostics(row_error, column_error, jnp.asarray(iterations), converged, (f, g))
  return pi, weights, diagnostics


def entropic_coupling(cost: jax.Array, a: jax.Array, b: jax.Array, *, epsilon: float,
                      marginals: str = "balanced", tau: float = 0.9, num_iterations: int = 50,
                      gradient: str = "stop", threshold: float = 1e-3,
                      keep_mask: Optional[jax.Array] = None
                      ) -> Tuple[jax.Array, Diagnostics]:
  """Entropic OT coupling of a cost matrix through ott-jax; returns `(pi, diagnostics)`.

      pi = argmin_{pi} <C, pi> - eps H(pi) + marginal terms,  pi_ij = exp((f_i + g_j - C_ij)/eps)

  Args:
    cost: `[n, m]` finite cost matrix.
    a, b: `[n]`, `[m]` positive marginals (equal total mass when balanced).
    epsilon: absolute entropic regularisation (not relative to the cost, unlike ott's default);
      may be traced, to sweep it under one compilation.
    marginals: `balanced` (pi in Pi(a, b)); `semi_relaxed` (row constraint only; exact in one
      log-space half-step, ott's `tau_b = 0`); `unbalanced` (KL-relaxed rows and columns with
      ott's `tau_a = tau_b = tau`).
    tau: ott's unbalancedness in (0, 1), used only when `marginals='unbalanced'`.
    num_iterations: fixed Sinkhorn iteration count (run every call; ignored by `semi_relaxed`).
    gradient: how the coupling is differentiated w.r.t. the cost —
      `stop`: no gradient (`jax.lax.stop_gradient` on the cost; the official HCL-OT code
        treats pi as a constant). Cheapest; the rest of the loss is unaffected.
      `implicit`: implicit function theorem on the Sinkhorn optimality conditions (ott's
        `ImplicitDiff`, its linear system solved by a ridged dense LU: `_implicit_diff`).
        Finite at every eps, also with coinciding embeddings. Exact only at the fixed point:
        with too few iterations (small eps converges slowly) the gradient is that of the
        *converged* coupling, not of the returned one. Memory O(n m), independent of
        `num_iterations`; time O(min(n, m)^3) for the LU.
      `unroll`: reverse-mode through the iterations (ott's checkpointed fixed-point loop).
        Exact for the returned coupling at any iteration count, memory and time grow with
        `num_iterations`; at small eps the backward pass through many log-sum-exps can
        lose float32 precision.
      For `semi_relaxed` the solution is one exact closed-form step, so all three differentiable
      modes coincide (ott 0.6's Sinkhorn with `tau_b = 0` gives NaN errors and gradients, hence
      the direct step through ott's `Geometry.update_potential`).
    threshold: tolerance on the enforced marginal errors for the `converged` flag.
    keep_mask: optional `[n, m]` booleans; False entries get a large finite cost and exactly
      zero mass.
  """
  pi, _, diagnostics = _entropic_solve(
      cost, a, b, epsilon=epsilon, marginals=marginals, tau=tau, num_iterations=num_iterations,
      gradient=gradient, threshold=threshold, keep_mask=keep_mask)
  return pi, diagnostics


def _uniform_marginals(n: int, dtype) -> jax.Array:
  return jnp.full((n,), 1.0 / n, dtype)


def batch_coupling(pairs: pairs_lib.Pairs, *, epsilon: float, marginals: str = "balanced",
                   tau: float = 0.9, cost: str = "sqeuclidean", kappa: float = 1.0,
                   num_iterations: int = 10, gradient: str = "stop",
                   threshold: float = 1e-3) -> Coupling:
  """In-batch entropic OT coupling (Jiang et al. 2023) of the geometry `pairs`.

  The global problem has uniform marginals `a = b = 1/(2B)` on the cost of `batch_problem`
  with each row's self and positive excluded; the returned `Coupling` holds this device's
  rows (`[2b, 2B]`) of pi and of the weights `w = pi / rowsum(pi)`, and the diagnostics. See
  `entropic_coupling` for `epsilon`, `marginals`, `tau`, `num_iterations`, `gradient` (with
  its numerical caveats) and `threshold`; `pairwise_cost` for `cost` and `kappa`. Under
  `shard_map` (`pairs.axis_name` set), `gradient='implicit'` is refused (ott-jax 0.6's
  lineax-based backward pass fails under `shard_map`); `unroll` and `stop` work.
  """
  _check_common(epsilon, num_iterations, marginals, gradient, threshold)
  if pairs.axis_name is not None and gradient == "implicit" and marginals != "semi_relaxed":
    raise ValueError("gradient='implicit' is not supported with axis_name (ott-jax 0.6's lineax "
                     "solve fails under shard_map); use gradient='unroll' or 'stop'")
  problem = batch_problem(pairs, cost=cost, kappa=kappa)
  marginal = _uniform_marginals(problem.cost.shape[0], problem.cost.dtype)
  pi, weights, diagnostics = _entropic_solve(
      problem.cost, marginal, marginal, epsilon=epsilon, marginals=marginals, tau=tau,
      num_iterations=num_iterations, gradient=gradient, threshold=threshold,
      keep_mask=problem.negative_mask)
  return Coupling(pairs_lib.local_rows(pi, pairs), pairs_lib.local_rows(weights, pairs),
                  diagnostics)


def coupling_to_weights(pi: jax.Array) -> jax.Array:
  """Row-stochastic weights `w_ij = pi_ij / sum_j pi_ij` (= 2B pi when rows sum to 1/(2B)).

  Excluded entries of `pi` are zero and stay zero. For a coupling whose rows have positive
  mass by construction (the quadratic one); entropic weights are normalised in log space
  (`row_normalised_weights`).
  """
  row_mass = jnp.sum(pi, axis=1, keepdims=True)
  return pi / jnp.maximum(row_mass, jnp.finfo(pi.dtype).tiny)


# ---------------------------------------------------------------- quadratic regularisation


def _row_threshold(v: jax.Array, keep: jax.Array, mass: jax.Array) -> jax.Array:
  """Per row i, the t_i with `sum_j keep_ij [t_i - v_ij]_+ = mass_i` (exact, by sorting).

  This is the exact maximisation of the quadratic dual over alpha for fixed beta (with
  `v = C - beta`, `mass = gamma a`): the same piecewise-linear equation as a projection onto
  the simplex.
  """
  big = jnp.asarray(jnp.finfo(v.dtype).max / (4 * v.shape[1]), v.dtype)
  sorted_v = jnp.sort(jnp.where(keep, v, big), axis=1)
  k = jnp.arange(1, v.shape[1] + 1, dtype=v.dtype)
  candidate = (mass[:, None] + jnp.cumsum(sorted_v, axis=1)) / k
  active = (candidate > sorted_v) & (sorted_v < big)
  support = jnp.maximum(jnp.sum(active, axis=1), 1)
  return jnp.take_along_axis(candidate, (support - 1)[:, None], axis=1)[:, 0]


def _quadratic_plan(alpha, beta, cost, keep, gamma):
  return jnp.where(keep, jnp.maximum(alpha[:, None] + beta[None, :] - cost, 0.0), 0.0) / gamma


def quadratic_coupling(cost: jax.Array, a: jax.Array, b: jax.Array, *, gamma: float,
                       num_iterations: int = 100, threshold: float = 1e-3,
                       keep_mask: Optional[jax.Array] = None) -> Tuple[jax.Array, Diagnostics]:
  """Quadratically-regularised OT (Blondel, Seguy, Rolet 2018); returns `(pi, diagnostics)`.

      min_{pi in Pi(a, b)} <C, pi> + (gamma/2) ||pi||_F^2
      dual: max_{alpha, beta} a.alpha + b.beta - (1/(2 gamma)) sum_ij [alpha_i + beta_j - C_ij]_+^2
      pi_ij = [alpha_i + beta_j - C_ij]_+ / gamma.

  The dual is concave and smooth; it is maximised by optax's L-BFGS for a fixed
  `num_iterations` (each with a zoom line search), started from the exact alpha-maximiser at
  beta = 0 and finished by one exact alpha-maximisation, so rows of pi sum to `a` to rounding
  and the column error is the solver's residual (reported). The coupling is sparse: entries
  with `alpha_i + beta_j <= C_ij` are exactly zero, more of them as gamma shrinks. The solve
  is not differentiated: cost and marginals enter as constants (`jax.lax.stop_gradient`),
  so the coupling carries no gradient (the L-BFGS iterations have no useful derivative; use
  it as constant negative weights, as the official HCL-OT code does with its couplings).

  Args:
    cost: `[n, m]` finite cost matrix.
    a, b: positive marginals of equal mass.
    gamma: regularisation strength > 0 (units of cost / mass); may be traced, to sweep it
      under one compilation.
    num_iterations: L-BFGS iterations.
    threshold: tolerance on the column marginal error for the `converged` flag.
    keep_mask: optional `[n, m]` booleans; False entries are excluded (zero mass).
  """
  gamma = _checks.positive("gamma", gamma)
  _checks.positive_int("num_iterations", num_iterations)
  _checks.positive("threshold", threshold)
  _checks.rank("cost", cost, 2)
  cost, a, b = (jax.lax.stop_gradient(x) for x in (cost, a, b))
  keep = jnp.ones(cost.shape, bool) if keep_mask is None else keep_mask
  n = cost.shape[0]

  def negative_dual(x):
    alpha, beta = x[:n], x[n:]
    slack = jnp.where(keep, jnp.maximum(alpha[:, None] + beta[None, :] - cost, 0.0), 0.0)
    return -(a @ alpha + b @ beta - jnp.sum(jnp.square(slack)) / (2.0 * gamma))

  beta0 = jnp.zeros_like(b)
  alpha0 = _row_threshold(cost - beta0[None, :], keep, gamma * a)
  optimizer = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(negative_dual)

  def step(carry, _):
    x, state = carry
    value, grad = value_and_grad(x, state=state)
    updates, state = optimizer.update(grad, state, x, value=value, grad=grad,
                                      value_fn=negative_dual)
    return (optax.apply_updates(x, updates), state), None

  x0 = jnp.concatenate([alpha0, beta0])
  (x, _), _ = jax.lax.scan(step, (x0, optimizer.init(x0)), None, length=num_iterations)
  beta = x[n:]
  alpha = _row_threshold(cost - beta[None, :], keep, gamma * a)
  pi = _quadratic_plan(alpha, beta, cost, keep, gamma)
  row_error, column_error = _marginal_errors(pi, a, b)
  converged = jnp.all(jnp.isfinite(pi)) & (row_error + column_error <= threshold)
  return pi, Diagnostics(row_error, column_error, jnp.asarray(num_iterations), converged,
                         (alpha, beta))


def quadratic_batch_coupling(pairs: pairs_lib.Pairs, *, gamma: float,
                             cost: str = "sqeuclidean", kappa: float = 1.0,
                             num_iterations: int = 10, threshold: float = 1e-3) -> Coupling:
  """In-batch quadratically-regularised coupling of the geometry `pairs` (a `Coupling`).

  `gamma` is batch-size free: with `rho_ij = N 2B pi_ij` the density of the weights relative to
  uniform negatives (mean 1 per row), the objective is

      mean cost under the weights + (gamma/2) · mean_ij rho_ij^2,

  i.e. `quadratic_coupling` with gamma_raw = gamma · 2B · N. For costs spread evenly over
  [0, 4], each anchor keeps the negatives within about sqrt(8 gamma) of its cheapest one.
  The coupling carries no gradient (`quadratic_coupling`).
  """
  gamma = _checks.positive("gamma", gamma)
  _checks.positive_int("num_iterations", num_iterations)
  problem = batch_problem(pairs, cost=cost, kappa=kappa)
  n = problem.cost.shape[0]
  marginal = _uniform_marginals(n, problem.cost.dtype)
  pi, diagnostics = quadratic_coupling(
      problem.cost, marginal, marginal, gamma=gamma * n * (n - 2),
      num_iterations=num_iterations, threshold=threshold, keep_mask=problem.negative_mask)
  pi = pairs_lib.local_rows(pi, pairs)
  return Coupling(pi, coupling_to_weights(pi), diagnostics)
