"""Mutual-information lower bounds as pure functions of a critic score matrix (Lee et al. 2024
use them to measure what contrastive representations share).

Estimators take `scores` of shape `[K, K]`: row i holds `S_ij = T(x_i, y_j)`, so the diagonal
scores the K joint pairs and the K(K−1) off-diagonal entries score pairs drawn from the
product of the marginals. All values are in nats. Each estimator returns a scalar to
*maximise* whose value is the estimate; where the training gradient differs from the gradient
of the estimate (MINE, JS, SMILE) the function returns a surrogate with the estimate's value
and the training gradient (`objective + stop_gradient(estimate − objective)`).

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

Training a critic by gradient ascent on NWJ, DV or MINE *directly* is unstable: their
partition terms contain `e^{S_ij}` of unbounded scores, and a separable critic trained at
learning rate 5e-3 on correlated Gaussians of true MI 2.40 nats drifts to NWJ −15, MINE −114
and JS −385 ± 2106 within a few hundred steps. To *estimate* MI, use
`contrax.mi.estimate_mi`, which trains the critic with a bounded objective (InfoNCE for
`infonce`, the JS f-GAN objective for every other bound), clips gradients and reads the
chosen bound out on held-out pairs; call these functions directly as training objectives
only with that failure mode in mind.

References: InfoNCE (van den Oord et al. 2018); NWJ (Nguyen, Wainwright, Jordan 2010); DV
(Donsker–Varadhan 1983); MINE (Belghazi et al. 2018); JS / f-GAN (Nowozin et al. 2016,
Hjelm et al. 2019); SMILE (Song & Ermon 2020), which trains the critic with the JS objective
and reads SMILE out, as done here; the bounds in one notation: Poole et al. 2019.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from contrax import _checks

ESTIMATORS = ("infonce", "nwj", "dv", "mine", "js", "smile-1", "smile-5", "smile-inf")
"""Every estimator name accepted by `objective`."""

MINE_DECAY = 0.9


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

  van den Oord et al. 2018; Poole et al. 2019.
  """
  scores = _check_scores(scores)
  k = scores.shape[0]
  return jnp.mean(jnp.diagonal(scores) - jax.nn.logsumexp(scores, axis=1)) + math.log(k)


def nwj(scores: jax.Array) -> jax.Array:
  """NWJ (f-divergence, KL) bound `mean_i S_ii − e^{-1} mean_{i≠j} e^{S_ij}` in nats.

  Nguyen, Wainwright & Jordan 2010; tight at `S = 1 + log p(x,y)/(p(x)p(y))`.
  Summed as `Σ_{i≠j} e^{S_ij − 1 − log K(K−1)}`, one term per score, so that each score's
  gradient is its own term `−e^{S_ij − 1} / (K(K−1))` rather than a shared overflowing factor
  times a softmax that underflows (`inf · 0 = NaN`). In float32 a term beyond
  `S_ij ≈ 88.7 + 1 + log K(K−1)` exceeds the largest float: the value is then −inf and that
  score's gradient −inf (the exact ones, rounded), never NaN. The diagonal mean is summed as
  `Σ_i S_ii / K`, which cannot overflow for finite scores.

  Maximising it directly over an unbounded critic diverges easily (a separable critic at
  learning rate 5e-3 reaches −15 nats on 2.40 nats); to estimate MI use
  `contrax.mi.estimate_mi(x, y, estimator='nwj')`, which trains with a bounded objective.
  """
  scores = _check_scores(scores)
  k = scores.shape[0]
  off = ~jnp.eye(k, dtype=bool)
  terms = jnp.exp(jnp.where(off, scores, -jnp.inf) - (1.0 + math.log(k * (k - 1))))
  return jnp.sum(jnp.diagonal(scores) / k) - jnp.sum(terms)


def dv(scores: jax.Array) -> jax.Array:
  """Donsker–Varadhan bound `mean_i S_ii − log mean_{i≠j} e^{S_ij}` in nats.

  Maximising it directly over an unbounded critic is unstable (MINE, DV with a corrected
  gradient, reaches −114 nats on 2.40 nats with a separable critic at learning rate 5e-3);
  to estimate MI use `contrax.mi.estimate_mi(x, y, estimator='dv')`, which trains with a
  bounded objective.
  """
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

  The read-out `e^{S}` explodes once a fast-trained critic's scores grow (a separable critic
  at learning rate 5e-3 reads −385 ± 2106 nats on 2.40 nats); to estimate MI use
  `contrax.mi.estimate_mi(x, y, estimator='js')`, which clips the gradients, averages the
  critic and reads the bound out on held-out pairs.
  """
  scores = _check_scores(scores)
  return _with_value(js_fgan(scores), nwj(scores + 1.0))


def _check_tau(tau: float) -> float:
  # np.isscalar's result as a plain bool: inline, its TypeIs would narrow `tau` to NumPy's
  # union of scalar types, which float() and the comparisons below do not accept.
  scalar = np.isscalar(tau)
  if isinstance(tau, (bool, np.bool_)) or not scalar:
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
  # A field named `count` shadows tuple.count, which mypy reports (a known limitation for
  # NamedTuple fields); the name is public API, so it stays.
  count: jax.Array  # type: ignore[assignment]


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

  Maximising it directly over an unbounded critic diverges easily (a separable critic at
  learning rate 5e-3 reaches −114 nats on 2.40 nats); to estimate MI use
  `contrax.mi.estimate_mi(x, y, estimator='mine')`, which trains with a bounded objective.
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
  NWJ, DV, MINE and the NWJ read-out of JS diverge when trained directly with an unbounded
  critic; `contrax.mi.estimate_mi` is the stable way to estimate MI.
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

