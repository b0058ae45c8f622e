"""Mutual-information estimators, critics and known-MI tasks (SPEC §5, [P003]).

Estimators are pure functions of a critic score matrix `scores` of shape `[K, K]`: row i
holds `S_ij = T(x_i, y_j)`, so the diagonal scores the K joint pairs and the K(K−1)
off-diagonal entries score pairs drawn from the product of the marginals. All values are in
nats. Each estimator returns a scalar to *maximise* whose value is the estimate; where the
training gradient differs from the gradient of the estimate (MINE, JS, SMILE) the function
returns a surrogate with the estimate's value and the training gradient
(`objective + stop_gradient(estimate − objective)`).

| name | estimate | training gradient |
|---|---|---|
| `infonce` | `mean_i(S_ii − logsumexp_j S_ij) + log K` (≤ log K) | its own |
| `nwj` | `mean_i S_ii − e^{-1} mean_{i≠j} e^{S_ij}` | its own |
| `dv` | `mean_i S_ii − log mean_{i≠j} e^{S_ij}` | its own |
| `mine` | DV | DV's, with the partition's denominator replaced by an EMA (0.9) |
| `js` | NWJ of `S + 1` | f-GAN JS: `mean −softplus(−S_ii) − mean_{i≠j} softplus(S_ij)` |
| `smile-τ` | DV with `clip(S, −τ, τ)` in the partition term | JS, as `js` |

Optimal critics differ by constants: DV, MINE and SMILE(∞) are invariant to `S + c`,
InfoNCE to `S_ij + c_i`; NWJ is tight at `S = 1 + log r` and the JS-trained critic converges
to `log r`, where `r = p(x, y) / (p(x) p(y))` — hence `js` reads NWJ out at `S + 1`.

References: InfoNCE (van den Oord et al. 2018); NWJ (Nguyen, Wainwright, Jordan 2010); DV
(Donsker–Varadhan 1983); MINE (Belghazi et al. 2018); JS / f-GAN (Nowozin et al. 2016,
Hjelm et al. 2019); SMILE (Song & Ermon 2020), which trains the critic with the JS objective
and reads SMILE out, as done here; the bounds in one notation: Poole et al. 2019.

Known-MI tasks give the ground truth: correlated Gaussians (and the MI-preserving cubic map),
the exact MI of linear features of Gaussians, and image pairs whose MI is set by labels
through a binary symmetric channel. [P003]'s exact statements could not be read; the tasks
and claims follow SPEC §5's reconstruction.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from contrax import _checks

ESTIMATORS = ("infonce", "nwj", "dv", "mine", "js", "smile-1", "smile-5", "smile-inf")
"""Every estimator name accepted by `objective`."""

MINE_DECAY = 0.9
LOG2 = math.log(2.0)


def _is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def _check_scores(scores) -> jax.Array:
  if not hasattr(scores, "shape"):
    raise TypeError(f"scores must be an array of shape [K, K], got {type(scores).__name__}")
  _checks.rank("scores", scores, 2)
  k, k2 = scores.shape
  if k != k2:
    raise ValueError(f"scores must be square [K, K] (diagonal = joint pairs), got shape "
                     f"{tuple(scores.shape)}")
  if k < 2:
    raise ValueError(f"scores must have K >= 2 rows (off-diagonal entries are needed), got "
                     f"shape {tuple(scores.shape)}")
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    raise TypeError(f"scores must be floating point, got dtype {scores.dtype}")
  return jnp.asarray(scores)


def _offdiag_logmeanexp(scores: jax.Array) -> jax.Array:
  """`log mean_{i≠j} exp(S_ij)`, masked (static shapes, no gathers)."""
  k = scores.shape[0]
  off = ~jnp.eye(k, dtype=bool)
  masked = jnp.where(off, scores, -jnp.inf)
  return jax.nn.logsumexp(masked) - math.log(k * (k - 1))


def _offdiag_mean(values: jax.Array) -> jax.Array:
  k = values.shape[0]
  off = ~jnp.eye(k, dtype=bool)
  return jnp.sum(jnp.where(off, values, 0.0)) / (k * (k - 1))


def _with_value(objective_value: jax.Array, estimate: jax.Array) -> jax.Array:
  """A scalar equal to `estimate` whose gradient is the gradient of `objective_value`."""
  return objective_value + jax.lax.stop_gradient(estimate - objective_value)


def infonce(scores: jax.Array) -> jax.Array:
  """InfoNCE bound `mean_i(S_ii − logsumexp_j S_ij) + log K` in nats; never exceeds log K.

  van den Oord et al. 2018; Poole et al. 2019 (SPEC §5).
  """
  scores = _check_scores(scores)
  k = scores.shape[0]
  return jnp.mean(jnp.diagonal(scores) - jax.nn.logsumexp(scores, axis=1)) + math.log(k)


def nwj(scores: jax.Array) -> jax.Array:
  """NWJ (f-divergence, KL) bound `mean_i S_ii − e^{-1} mean_{i≠j} e^{S_ij}` in nats.

  Nguyen, Wainwright & Jordan 2010; tight at `S = 1 + log p(x,y)/(p(x)p(y))` (SPEC §5).
  Summed as `Σ_{i≠j} e^{S_ij − 1 − log K(K−1)}`, one term per score, so that each score's
  gradient is its own term `−e^{S_ij − 1} / (K(K−1))` rather than a shared overflowing factor
  times a softmax that underflows (`inf · 0 = NaN`). In float32 a term beyond
  `S_ij ≈ 88.7 + 1 + log K(K−1)` exceeds the largest float: the value is then −inf and that
  score's gradient −inf (the exact ones, rounded), never NaN. The diagonal mean is summed as
  `Σ_i S_ii / K`, which cannot overflow for finite scores.
  """
  scores = _check_scores(scores)
  k = scores.shape[0]
  off = ~jnp.eye(k, dtype=bool)
  terms = jnp.exp(jnp.where(off, scores, -jnp.inf) - (1.0 + math.log(k * (k - 1))))
  return jnp.sum(jnp.diagonal(scores) / k) - jnp.sum(terms)


def dv(scores: jax.Array) -> jax.Array:
  """Donsker–Varadhan bound `mean_i S_ii − log mean_{i≠j} e^{S_ij}` in nats (SPEC §5)."""
  scores = _check_scores(scores)
  return jnp.mean(jnp.diagonal(scores)) - _offdiag_logmeanexp(scores)


def js_fgan(scores: jax.Array) -> jax.Array:
  """f-GAN Jensen–Shannon objective `mean_i −softplus(−S_ii) − mean_{i≠j} softplus(S_ij)`.

  Not an MI estimate: the critic-training objective of `js` and `smile` (Nowozin et al. 2016;
  Hjelm et al. 2019). Its maximiser is `S = log p(x,y)/(p(x)p(y))`.
  """
  scores = _check_scores(scores)
  joint = jnp.mean(-jax.nn.softplus(-jnp.diagonal(scores)))
  return joint - _offdiag_mean(jax.nn.softplus(scores))


def js(scores: jax.Array) -> jax.Array:
  """JS-trained critic with NWJ readout: value `nwj(S + 1)`, gradient of `js_fgan(S)`.

  The JS critic converges to `log r`, and NWJ is tight at `1 + log r` (Poole et al. 2019).
  """
  scores = _check_scores(scores)
  return _with_value(js_fgan(scores), nwj(scores + 1.0))


def _check_tau(tau: float) -> float:
  if isinstance(tau, (bool, np.bool_)) or not np.isscalar(tau):
    raise TypeError(f"tau must be a real number > 0 or inf, got {tau!r}")
  if not (tau > 0) or np.isnan(tau):
    raise ValueError(f"tau must be > 0 (inf disables the clip), got {tau!r}")
  return float(tau)


def smile_estimate(scores: jax.Array, tau: float) -> jax.Array:
  """SMILE(τ) value `mean_i S_ii − log mean_{i≠j} exp(clip(S_ij, −τ, τ))` (Song & Ermon 2020).

  `tau=inf` is DV. The clip bounds the variance of the partition term at the price of bias.
  """
  scores = _check_scores(scores)
  tau = _check_tau(tau)
  clipped = scores if math.isinf(tau) else jnp.clip(scores, -tau, tau)
  return jnp.mean(jnp.diagonal(scores)) - _offdiag_logmeanexp(clipped)


def smile(scores: jax.Array, tau: float) -> jax.Array:
  """SMILE(τ) surrogate: value `smile_estimate(S, τ)`, gradient of `js_fgan(S)`.

  As in Song & Ermon 2020, the critic is trained with the JS objective and SMILE is the
  readout; training on the clipped DV itself would stop the gradient wherever |S| > τ.
  """
  scores = _check_scores(scores)
  return _with_value(js_fgan(scores), smile_estimate(scores, tau))


class MineState(NamedTuple):
  """MINE's moving average of the partition term, kept in log space.

  log_ema: log of the (not yet debiased) EMA of `mean_{i≠j} e^{S_ij}`; starts at −inf (EMA 0).
  count: number of updates so far (for the `1 − decay^t` debiasing).
  """
  log_ema: jax.Array
  count: jax.Array


def mine_init() -> MineState:
  """The initial MINE state: an empty moving average."""
  return MineState(log_ema=jnp.asarray(-jnp.inf, jnp.float32), count=jnp.asarray(0, jnp.int32))


def mine(scores: jax.Array, state: MineState, decay: float = MINE_DECAY
         ) -> tuple[jax.Array, MineState]:
  """MINE: the DV estimate with a moving-average corrected gradient (Belghazi et al. 2018).

  The DV partition `log m`, `m = mean_{i≠j} e^{S_ij}`, has the biased minibatch gradient
  `∇m / m`. MINE divides by a moving average instead: with `ema_t = decay · ema_{t−1} +
  (1 − decay) · m_t` (starting at 0 and debiased by `1 − decay^t`, so the first step uses
  `m_1`), the surrogate `mean_i S_ii − sg(log m) − sg(m / êma_t) · (log m − sg(log m))`
  has the DV estimate as its value and gradient `∇ mean_i S_ii − ∇m / êma_t`.

  Returns `(surrogate, new_state)`; thread the state through the training loop.
  """
  scores = _check_scores(scores)
  decay = _checks.in_range("decay", decay, 0.0, 1.0)
  if not isinstance(state, MineState):
    raise TypeError(f"state must be a MineState (from mine_init()), got {type(state).__name__}")
  log_m = _offdiag_logmeanexp(scores)
  log_m_fixed = jax.lax.stop_gradient(log_m)
  count = state.count + 1
  log_decay = jnp.log(jnp.asarray(decay, jnp.float32))
  log_ema = jnp.logaddexp(log_decay + state.log_ema, math.log1p(-decay) + log_m_fixed)
  log_ema_debiased = log_ema - jnp.log1p(-jnp.power(decay, count.astype(jnp.float32)))
  ratio = jnp.exp(log_m_fixed - log_ema_debiased)
  joint = jnp.mean(jnp.diagonal(scores))
  surrogate = joint - log_m_fixed - ratio * (log_m - log_m_fixed)
  return surrogate, MineState(log_ema=log_ema.astype(jnp.float32), count=count)


def smile_tau(name: str) -> float:
  """The clip τ of an estimator name `smile-<τ>` (`smile-inf` gives inf)."""
  _checks.choice("estimator", name, ESTIMATORS)
  if not name.startswith("smile-"):
    raise ValueError(f"estimator {name!r} is not a SMILE estimator")
  return float(name.split("-", 1)[1])


def objective(name: str, scores: jax.Array, state: Optional[MineState] = None
              ) -> tuple[jax.Array, Optional[MineState]]:
  """`(surrogate to maximise, new MINE state)` for estimator `name` in `ESTIMATORS`.

  The surrogate's value is the estimate in nats. `state` is used (and required) only by
  `mine`; the others return it unchanged.
  """
  _checks.choice("estimator", name, ESTIMATORS)
  if name == "mine":
    if state is None:
      raise ValueError("estimator 'mine' needs state=mine_init() (its moving average)")
    return mine(scores, state)
  if name.startswith("smile-"):
    return smile(scores, smile_tau(name)), state
  plain = {"infonce": infonce, "nwj": nwj, "dv": dv, "js": js}
  return plain[name](scores), state


# ----------------------------------------------------------------------------- critics


class MLP(nn.Module):
  """`[Dense(h) → ReLU]` for h in `hidden_sizes`, then a linear `Dense(features)`."""
  hidden_sizes: Sequence[int] = (256,)
  features: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for width in self.hidden_sizes:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.features)(x)


def _check_pairs(x: jax.Array, y: jax.Array) -> None:
  _checks.rank("x", x, 2)
  _checks.rank("y", y, 2)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"x and y must hold the same number K of paired rows, got x{x.shape} and "
                     f"y{y.shape}")


class SeparableCritic(nn.Module):
  """`S_ij = g(x_i)ᵀ h(y_j)` with two MLP encoders g, h (Poole et al. 2019's separable critic)."""
  hidden_sizes: Sequence[int] = (256,)
  embed_dim: int = 32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    _check_pairs(x, y)
    gx = MLP(self.hidden_sizes, self.embed_dim, name="g")(x)
    hy = MLP(self.hidden_sizes, self.embed_dim, name="h")(y)
    return gx @ hy.T


class BilinearCritic(nn.Module):
  """`S_ij = u_iᵀ W v_j` with `u = g(x)`, `v = h(y)`: MLP encoders when `hidden_sizes` is
  given (output `embed_dim`), the raw inputs when it is None."""
  hidden_sizes: Optional[Sequence[int]] = None
  embed_dim: int = 32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    _check_pairs(x, y)
    if self.hidden_sizes is not None:
      x = MLP(self.hidden_sizes, self.embed_dim, name="g")(x)
      y = MLP(self.hidden_sizes, self.embed_dim, name="h")(y)
    w = self.param("w", nn.initializers.normal(1.0 / math.sqrt(x.shape[1] * y.shape[1])),
                   (x.shape[1], y.shape[1]))
    return x @ w @ y.T


class ConcatCritic(nn.Module):
  """`S_ij = MLP([x_i, y_j])`, the joint critic, evaluated on all K² pairs by broadcasting.

  The first layer `W [x; y] + b = W_x x + W_y y + b` is split by linearity: `W_x x_i` and
  `W_y y_j` are computed once per row and summed by broadcasting into `[K, K, h]`, which is
  the same function as concatenating the K² pairs at a fraction of the cost.
  """
  hidden_sizes: Sequence[int] = (256,)

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    _check_pairs(x, y)
    if not self.hidden_sizes:
      raise ValueError(f"hidden_sizes must name at least one layer, got {self.hidden_sizes!r}")
    first, *rest = self.hidden_sizes
    hx = nn.Dense(first, name="first_x")(x)
    hy = nn.Dense(first, use_bias=False, name="first_y")(y)
    h = nn.relu(hx[:, None, :] + hy[None, :, :])
    for width in rest:
      h = nn.relu(nn.Dense(width)(h))
    return nn.Dense(1, name="out")(h)[..., 0]


CRITICS = {"separable": SeparableCritic, "bilinear": BilinearCritic, "concat": ConcatCritic}


# ----------------------------------------------------------------------------- Gaussian tasks


def gaussian_correlation(mi_nats: float, dim: int) -> float:
  """Per-dimension correlation `ρ = sqrt(1 − exp(−2I/d))` giving `I` nats over `d` dimensions."""
  mi_nats = _checks.non_negative("mi_nats", mi_nats)
  dim = _checks.positive_int("dim", dim)
  return math.sqrt(-math.expm1(-2.0 * mi_nats / dim))


def _check_rho(rho) -> jax.Array:
  if not hasattr(rho, "shape"):
    rho = np.asarray(rho, np.float64)
  _checks.rank("rho", rho, 1)
  if rho.shape[0] < 1:
    raise ValueError(f"rho must hold at least one correlation, got shape {rho.shape}")
  if not _is_traced(rho):
    values = np.asarray(rho)
    if not (np.all(np.isfinite(values)) and np.all(np.abs(values) < 1)):
      raise ValueError(f"rho must hold correlations in (-1, 1), got {values}")
  return rho


def gaussian_mi(rho) -> float:
  """`I(X; Y) = −½ Σ_i log(1 − ρ_i²)` nats for unit Gaussians correlated dimension-wise."""
  rho = np.asarray(_check_rho(rho), np.float64)
  return float(-0.5 * np.sum(np.log1p(-rho**2)))


def correlated_gaussian(key: jax.Array, num_samples: int, rho, *, cubic: bool = False
                        ) -> tuple[jax.Array, jax.Array]:
  """K pairs `x ~ N(0, I)`, `y = ρ ⊙ x + sqrt(1 − ρ²) ⊙ ε` (so `corr(x_i, y_i) = ρ_i`).

  `cubic=True` returns `y³`, an invertible map that leaves I(X; Y) unchanged. `rho` may be
  traced (a schedule inside `jit`); concrete values are checked to lie in (−1, 1).
  """
  num_samples = _checks.positive_int("num_samples", num_samples)
  rho = jnp.asarray(_check_rho(rho), jnp.float32)
  kx, ke = jax.random.split(key)
  shape = (num_samples, rho.shape[0])
  x = jax.random.normal(kx, shape)
  y = rho * x + jnp.sqrt(1.0 - rho**2) * jax.random.normal(ke, shape)
  return x, (y**3 if cubic else y)


def gaussian_log_density_ratio(x: jax.Array, y: jax.Array, rho, *, cubic: bool = False
                               ) -> jax.Array:
  """The optimal critic `S_ij = log p(x_i, y_j) / (p(x_i) p(y_j))` for `correlated_gaussian`.

  Per dimension, `−½ log(1 − ρ²) − (ρ²(x² + y²) − 2ρxy) / (2(1 − ρ²))`, summed; with
  `cubic=True`, y is mapped back by the cube root (the Jacobians cancel in the ratio).
  """
  _check_pairs(x, y)
  rho = jnp.asarray(_check_rho(rho), x.dtype)
  if x.shape[1] != rho.shape[0] or y.shape[1] != rho.shape[0]:
    raise ValueError(f"x and y must have one column per correlation in rho "
                     f"({rho.shape[0]}), got x{x.shape} and y{y.shape}")
  if cubic:
    y = jnp.cbrt(y)
  a = rho / (1.0 - rho**2)
  b = rho**2 / (2.0 * (1.0 - rho**2))
  const = -0.5 * jnp.sum(jnp.log1p(-rho**2))
  cross = (x * a) @ y.T
  return const + cross - jnp.sum(b * x**2, axis=1)[:, None] - jnp.sum(b * y**2, axis=1)[None, :]


def _check_covariance(name: str, cov) -> np.ndarray:
  cov = np.asarray(cov, np.float64)
  _checks.rank(name, cov, 2)
  if cov.shape[0] != cov.shape[1]:
    raise ValueError(f"{name} must be square, got shape {cov.shape}")
  if not np.allclose(cov, cov.T, atol=1e-8 * max(1.0, np.abs(cov).max())):
    raise ValueError(f"{name} must be symmetric")
  return cov


def _logdet(name: str, matrix: np.ndarray) -> float:
  sign, logdet = np.linalg.slogdet(matrix)
  if sign <= 0:
    raise ValueError(f"{name} must be positive definite (its determinant is not > 0)")
  return float(logdet)


def gaussian_mi_from_covariance(cov, dim_x: int) -> float:
  """Exact `I(Z1; Z2) = ½[log det Σ11 + log det Σ22 − log det Σ]` nats for jointly Gaussian
  `(Z1, Z2)` with covariance `cov`, Z1 being the first `dim_x` coordinates (float64)."""
  cov = _check_covariance("cov", cov)
  dim_x = _checks.positive_int("dim_x", dim_x)
  if dim_x >= cov.shape[0]:
    raise ValueError(f"dim_x must be < {cov.shape[0]} (the size of cov), got {dim_x}")
  return 0.5 * (_logdet("cov[:dim_x, :dim_x]", cov[:dim_x, :dim_x])
                + _logdet("cov[dim_x:, dim_x:]", cov[dim_x:, dim_x:]) - _logdet("cov", cov))


def linear_features_mi(rho, w1, w2=None) -> float:
  """Exact MI (nats) of linear features `Z1 = W1 x`, `Z2 = W2 y` of `correlated_gaussian` pairs.

  `w1`, `w2` are `[features, d]` (`w2=None` means a shared encoder, `W2 = W1`). With
  `D = diag(ρ)`: `Σ11 = W1 W1ᵀ`, `Σ22 = W2 W2ᵀ`, `Σ12 = W1 D W2ᵀ`, then
  `gaussian_mi_from_covariance`. Rank-deficient features raise (their MI needs a rank
  reduction first). Computed in float64 on the host.
  """
  rho = np.asarray(_check_rho(rho), np.float64)
  w1 = np.asarray(w1, np.float64)
  w2 = w1 if w2 is None else np.asarray(w2, np.float64)
  for name, w in (("w1", w1), ("w2", w2)):
    _checks.rank(name, w, 2)
    if w.shape[1] != rho.shape[0]:
      raise ValueError(f"{name} must have shape [features, {rho.shape[0]}], got {w.shape}")
  s11, s22, s12 = w1 @ w1.T, w2 @ w2.T, (w1 * rho) @ w2.T
  cov = np.block([[s11, s12], [s12.T, s22]])
  return gaussian_mi_from_covariance(cov, w1.shape[0])


# ----------------------------------------------------------------------------- label channel


def binary_entropy_bits(p) -> np.ndarray:
  """`H_b(p) = −p log2 p − (1 − p) log2(1 − p)` bits, with `H_b(0) = H_b(1) = 0`."""
  p = np.asarray(p, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
  return np.where((p == 0) | (p == 1), 0.0, h)


def _check_flip_prob(flip_prob, num_bits: int) -> np.ndarray:
  probs = np.asarray(flip_prob, np.float64)
  if probs.ndim == 0:
    probs = np.full(num_bits, float(probs))
  if probs.shape != (num_bits,):
    raise ValueError(f"flip_prob must be a number or hold num_bits={num_bits} probabilities, "
                     f"got shape {probs.shape}")
  if not (np.all(np.isfinite(probs)) and np.all(probs >= 0) and np.all(probs <= 0.5)):
    raise ValueError(f"flip_prob must lie in [0, 0.5] (0.5: independent bits), got {flip_prob!r}")
  return probs


def label_channel_mi(num_bits: int, flip_prob, *, unit: str = "nats") -> float:
  """`I = Σ_k (1 − H_b(p_k))` bits (`= n(1 − H_b(p))` for one p) between the two views.

  n independent fair bits; the second view's bit k is flipped with probability `p_k`.
  """
  num_bits = _checks.positive_int("num_bits", num_bits)
  _checks.choice("unit", unit, ("nats", "bits"))
  bits = float(np.sum(1.0 - binary_entropy_bits(_check_flip_prob(flip_prob, num_bits))))
  return bits * (LOG2 if unit == "nats" else 1.0)


@flax.struct.dataclass
class LabelChannel:
  """A pool of images split into two classes and the channel between the views' labels.

  images: `[N, H, W, C]` uint8 pool. class_rows: `[2, M]` pool rows of each class (padded by
  repetition; only the first `class_count[c]` entries are used). flip_prob: `[n]`.
  """
  images: jax.Array
  class_rows: jax.Array
  class_count: jax.Array
  flip_prob: jax.Array
  num_bits: int = flax.struct.field(pytree_node=False)

  @property
  def mi_nats(self) -> float:
    return label_channel_mi(self.num_bits, np.asarray(self.flip_prob))


def label_channel(images, labels, *, num_bits: int, flip_prob, classes: Sequence[int] = (0, 1)
                  ) -> LabelChannel:
  """Image pairs whose MI is set by labels through a binary symmetric channel (SPEC §5).

  A view is `num_bits` image tiles side by side; tile k shows a random image of
  `classes[b_k]` for a fair bit `b_k`. The second view flips each bit with probability
  `flip_prob` (a number or one per bit) and draws *different* images: a new image of the same
  class when the bit is kept. As long as no image appears in both classes, the label is a
  function of the image and the views are independent given the labels, so
  `I(X1; X2) = I(L1; L2) = Σ_k (1 − H_b(p_k))` bits (up to the negligible dependence that
  "different image" adds on a finite pool). Works on any `(images, labels)` arrays, e.g.
  `contrax.data.load('digits')` or `load('folder:PATH')` splits. With `p_k = 0.5` bit k is
  unshared (view-specific); with `p_k = 0` it is fully shared.
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.dtype != np.uint8:
    raise TypeError(f"images must be uint8 [N, H, W, C], got dtype {images.dtype}")
  _checks.rank("images", images, 4)
  _checks.rank("labels", labels, 1)
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"labels must hold integers, got dtype {labels.dtype}")
  if len(labels) != len(images):
    raise ValueError(f"images and labels must have the same length, got {len(images)} and "
                     f"{len(labels)}")
  num_bits = _checks.positive_int("num_bits", num_bits)
  probs = _check_flip_prob(flip_prob, num_bits)
  classes = tuple(classes)
  if len(classes) != 2 or classes[0] == classes[1]:
    raise ValueError(f"classes must name two different classes, got {classes!r}")
  rows = [np.flatnonzero(labels == c) for c in classes]
  for c, r in zip(classes, rows):
    if len(r) < 2:
      raise ValueError(f"classes: class {c!r} has {len(r)} images in labels; at least 2 are "
                       f"needed (positives are two different images)")
  width = max(len(r) for r in rows)
  class_rows = np.stack([np.resize(r, width) for r in rows]).astype(np.int32)
  return LabelChannel(images=jnp.asarray(images), class_rows=jnp.asarray(class_rows),
                      class_count=jnp.asarray([len(r) for r in rows], jnp.int32),
                      flip_prob=jnp.asarray(probs, jnp.float32), num_bits=num_bits)


def _tile(images: jax.Array) -> jax.Array:
  """`[P, n, H, W, C]` → `[P, H, n·W, C]`: the n tiles side by side."""
  p, n, h, w, c = images.shape
  return jnp.transpose(images, (0, 2, 1, 3, 4)).reshape(p, h, n * w, c)


def sample_label_channel(key: jax.Array, channel: LabelChannel, num_pairs: int
                         ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """`(x1, x2, bits1, bits2)`: uint8 views `[P, H, n·W, C]` and their int32 bits `[P, n]`.

  Pure and jittable (static shapes: positions are drawn as `floor(u · count)`).
  """
  num_pairs = _checks.positive_int("num_pairs", num_pairs)
  if not isinstance(channel, LabelChannel):
    raise TypeError(f"channel must be a LabelChannel (from label_channel()), got "
                    f"{type(channel).__name__}")
  shape = (num_pairs, channel.num_bits)
  k_bits, k_flip, k_pos1, k_offset, k_pos2 = jax.random.split(key, 5)
  bits1 = jax.random.bernoulli(k_bits, 0.5, shape).astype(jnp.int32)
  flips = jax.random.bernoulli(k_flip, channel.flip_prob, shape).astype(jnp.int32)
  bits2 = bits1 ^ flips
  count1 = channel.class_count[bits1]
  count2 = channel.class_count[bits2]

  def position(k, n):
    return jnp.minimum(jnp.floor(jax.random.uniform(k, shape) * n).astype(jnp.int32), n - 1)

  pos1 = position(k_pos1, count1)
  other_same = (pos1 + 1 + position(k_offset, count1 - 1)) % count1
  pos2 = jnp.where(flips == 0, other_same, position(k_pos2, count2))
  x1 = _tile(channel.images[channel.class_rows[bits1, pos1]])
  x2 = _tile(channel.images[channel.class_rows[bits2, pos2]])
  return x1, x2, bits1, bits2
