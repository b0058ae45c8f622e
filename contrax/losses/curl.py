"""CURL: contrastive losses with k negatives and the mean-classifier loss (Arora et al. 2019).

Arora, Khandeparkar, Khodak, Plevrakis, Saunshi, *A Theoretical Analysis of Contrastive
Unsupervised Representation Learning*, ICML 2019 (arXiv 1902.09229), as used by Merad, Yu,
Bacry, Gaïffas, arXiv 2012.01064 [P000].

A tuple is `(x, x⁺, x⁻_1..x⁻_k)`; with features `f` the scores are

    v_i = f(x)ᵀ (f(x⁺) - f(x⁻_i)),                    shape [M, k]

and the unsupervised loss is the mean over the M tuples of a loss `ℓ(v)`:

    logistic  ℓ(v) = log_b(1 + Σ_i exp(-v_i)) = logsumexp([0, -v]) / ln b
    hinge     ℓ(v) = max(0, 1 + max_i(-v_i))

Features are used as they are (no normalisation), as in the paper. With `axis_name` (under
`shard_map` / a named `vmap`, M sharded), means are global: psum of sums / psum of counts.

Raw features can be large enough that `f(x)ᵀ f(x⁺)` overflows float32 (entries beyond ~1e19)
while the score, or the loss, does not. Scores are therefore computed in a power-of-two-scaled
form (`curl_scores`; `logistic_tuple_losses` for the logistic loss): for all finite features,
`curl_loss` is the exact loss rounded (+inf only where a tuple's loss, or the sum over
tuples, exceeds the float range) with finite gradients. `supervised_multiway_loss` uses plain inner
products (moderate magnitudes).
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from contrax import _checks

LOSSES = ("logistic", "hinge")


def _global_mean(per_row: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """Mean over the rows of all devices of `axis_name` (psum of sums / psum of counts)."""
  total, count = jnp.sum(per_row), jnp.asarray(per_row.shape[0], per_row.dtype)
  if axis_name is not None:
    total, count = jax.lax.psum((total, count), axis_name)
  return total / count


def _check_base(base: float) -> float:
  base = _checks.positive("base", base)
  if base == 1.0:
    raise ValueError("base must be > 0 and != 1 (it is the base of a logarithm), got 1.0")
  return base


def _check_tuples(fx, fx_pos, fx_neg) -> None:
  _checks.rank("fx", fx, 2)
  _checks.rank("fx_pos", fx_pos, 2)
  _checks.rank("fx_neg", fx_neg, 3)
  _checks.same_shape(("fx", "fx_pos"), fx, fx_pos)
  if np.shape(fx_neg)[0] != np.shape(fx)[0] or np.shape(fx_neg)[2] != np.shape(fx)[1]:
    raise ValueError(f"fx_neg must have shape (M, k, d) = ({np.shape(fx)[0]}, k, "
                     f"{np.shape(fx)[1]}) to match fx, got {np.shape(fx_neg)}")


def _binary_exponent(x: jax.Array, axis) -> jax.Array:
  """e with `max |x| = m 2^e`, m in [0.5, 1) (0 for all-zero x): `x 2^-e` lies in (-1, 1)."""
  return jnp.frexp(jnp.max(jnp.abs(x), axis=axis))[1]


def _scaled_scores(fx, fx_pos, fx_neg) -> Tuple[jax.Array, jax.Array]:
  """`(r [M, k], e [M])` with scores `v = r 2^e`: `r_i = (fx 2^-e_x)ᵀ ((fx⁺ - fx⁻_i) 2^-e_w)`,
  |r_i| < 2d, e = e_x + e_w. Scaling by powers of two is exact, so no intermediate overflows;
  `ldexp(r, e)` is ±inf only where |v| itself exceeds the float range."""
  e_x = _binary_exponent(fx, 1)
  e_w = _binary_exponent(jnp.concatenate([fx_pos[:, None], fx_neg], axis=1), (1, 2))
  u = jnp.ldexp(fx, -e_x[:, None])
  w = jnp.ldexp(fx_pos, -e_w[:, None])[:, None, :] - jnp.ldexp(fx_neg, -e_w[:, None, None])
  return jnp.einsum("md,mkd->mk", u, w), e_x + e_w


def _score_tangent(fx, fx_pos, fx_neg, d_fx, d_pos, d_neg) -> jax.Array:
  """Derivative of the bilinear scores `fxᵀ (fx⁺ - fx⁻_i)` along the tangents, `[M, k]`."""
  return (jnp.einsum("md,mkd->mk", d_fx, fx_pos[:, None, :] - fx_neg)
          + jnp.einsum("md,mkd->mk", fx, d_pos[:, None, :] - d_neg))


@jax.custom_jvp
def _overflow_free_scores(fx, fx_pos, fx_neg):
  r, e = _scaled_scores(fx, fx_pos, fx_neg)
  return jnp.ldexp(r, e[:, None])


@_overflow_free_scores.defjvp
def _overflow_free_scores_jvp(primals, tangents):
  # The plain bilinear derivative: autodiff through the scalings would carry 2^e factors.
  return _overflow_free_scores(*primals), _score_tangent(*primals, *tangents)


def curl_scores(fx: jax.Array, fx_pos: jax.Array, fx_neg: jax.Array) -> jax.Array:
  """Scores `v[m, i] = f(x_m)ᵀ (f(x⁺_m) - f(x⁻_{m,i}))` of M tuples with k negatives.

  Computed in a power-of-two-scaled form: a score is ±inf only where it exceeds the float
  range (not where `f(x)ᵀ f(x⁺)` alone would), and gradients are the bilinear ones.

  Args:
    fx: `[M, d]` anchors; fx_pos: `[M, d]` positives; fx_neg: `[M, k, d]` negatives.
  Returns:
    `[M, k]` scores.
  """
  _check_tuples(fx, fx_pos, fx_neg)
  return _overflow_free_scores(fx, fx_pos, fx_neg)


def _block_means(fx_pos, fx_neg) -> Tuple[jax.Array, jax.Array]:
  """Checked block shapes `[M, b, d]`, `[M, k, b, d]` -> their means over b."""
  _checks.rank("fx_pos", fx_pos, 3)
  _checks.rank("fx_neg", fx_neg, 4)
  if np.shape(fx_pos)[2] != np.shape(fx_neg)[3] or np.shape(fx_pos)[1] != np.shape(fx_neg)[2]:
    raise ValueError(f"fx_pos [M, b, d] and fx_neg [M, k, b, d] must share b and d, got "
                     f"{np.shape(fx_pos)} and {np.shape(fx_neg)}")
  return jnp.mean(fx_pos, axis=1), jnp.mean(fx_neg, axis=2)


def curl_block_scores(fx: jax.Array, fx_pos: jax.Array, fx_neg: jax.Array) -> jax.Array:
  """Block variant of `curl_scores`: positives and negatives are means over b samples.

  Args:
    fx: `[M, d]`; fx_pos: `[M, b, d]` (b samples of the anchor's class);
    fx_neg: `[M, k, b, d]` (b samples of each negative class).
  Returns:
    `[M, k]` scores `f(x)ᵀ (mean_b f(x⁺) - mean_b f(x⁻_i))` (Arora et al. §6).
  """
  return curl_scores(fx, *_block_means(fx_pos, fx_neg))


def _logistic_rows(v: jax.Array, base: float, mask: Optional[jax.Array] = None) -> jax.Array:
  """Per-row `logsumexp([0, -v]) / ln b` over the entries where `mask` (all if None)."""
  neg_v = -v if mask is None else jnp.where(mask, -v, -jnp.inf)
  zero = jnp.zeros(v.shape[:-1] + (1,), v.dtype)
  return jax.nn.logsumexp(jnp.concatenate([zero, neg_v], axis=-1), axis=-1) / math.log(base)


def _hinge_rows(v: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
  """Per-row `max(0, 1 + max_i(-v_i))` over the entries where `mask` (all if None)."""
  neg_v = -v if mask is None else jnp.where(mask, -v, -jnp.inf)
  return jax.nn.relu(1.0 + jnp.max(neg_v, axis=-1))


def _scaled_logistic(fx, fx_pos, fx_neg) -> Tuple[jax.Array, jax.Array]:
  """Per tuple, `logsumexp([0, -v])` and the softmax `p` over `[0, -v_1, .., -v_k]`.

  With `v = r 2^e` (`_scaled_scores`) and `r* = min(0, min_i r_i)`, the loss is
  `-2^e r* + logsumexp([2^e r*, -2^e (r - r*)])`: every argument of the log-sum-exp is <= 0
  and one of them is 0, so only a loss beyond the float range overflows (to +inf).
  """
  r, e = _scaled_scores(fx, fx_pos, fx_neg)
  r_star = jnp.minimum(jnp.min(r, axis=1), 0.0)[:, None]
  arguments = jnp.ldexp(jnp.concatenate([r_star, r_star - r], axis=1), e[:, None])
  log_sum = jax.nn.logsumexp(arguments, axis=1)
  return log_sum - arguments[:, 0], jnp.exp(arguments - log_sum[:, None])


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def logistic_tuple_losses(fx: jax.Array, fx_pos: jax.Array, fx_neg: jax.Array,
                          base: float) -> jax.Array:
  """Per-tuple logistic CURL loss `log_b(1 + Σ_i exp(-v_i))` of `curl_scores`, shape `[M]`.

  Never NaN for finite features: the value is the exact loss rounded (+inf only where it
  exceeds the float range, `f` beyond ~1e19), and with `p_i = softmax([0, -v])_i`,
  `∂ℓ/∂v_i = -p_i / ln b`, so

      ∂ℓ/∂f(x) = (Σ_i p_i f(x⁻_i) - (Σ_i p_i) f(x⁺)) / ln b,
      ∂ℓ/∂f(x⁺) = -(Σ_i p_i) f(x) / ln b,      ∂ℓ/∂f(x⁻_i) = p_i f(x) / ln b,

  weighted sums of the features with weights in [0, 1]: finite also where ℓ is +inf.
  """
  return _scaled_logistic(fx, fx_pos, fx_neg)[0] / math.log(base)


@logistic_tuple_losses.defjvp
def _logistic_tuple_losses_jvp(base, primals, tangents):
  loss, p = _scaled_logistic(*primals)
  d_loss = -jnp.sum(p[:, 1:] * _score_tangent(*primals, *tangents), axis=1)
  return loss / math.log(base), d_loss / math.log(base)


def logistic_loss(v: jax.Array, base: float = 2.0, *, axis_name: Optional[str] = None) -> jax.Array:
  """Mean over rows of `log_b(1 + Σ_i exp(-v_i))`, computed as `logsumexp([0, -v]) / ln b`.

  Base 2 (Arora et al.) gives ℓ(0) = 1 for k = 1. v: `[M, k]` scores (finite; from features,
  `curl_loss` avoids overflowing scores).
  """
  _checks.rank("v", v, 2)
  base = _check_base(base)
  return _global_mean(_logistic_rows(v, base), axis_name)


def hinge_loss(v: jax.Array, *, axis_name: Optional[str] = None) -> jax.Array:
  """Mean over rows of `max(0, 1 + max_i(-v_i))`. v: `[M, k]` scores."""
  _checks.rank("v", v, 2)
  return _global_mean(_hinge_rows(v), axis_name)


def curl_loss(fx: jax.Array, fx_pos: jax.Array, fx_neg: jax.Array, *, loss: str = "logistic",
              base: float = 2.0, axis_name: Optional[str] = None) -> jax.Array:
  """The unsupervised CURL loss L_un: `loss` of `curl_scores` (block scores if fx_pos is 3-D).

  The logistic loss is `logistic_tuple_losses` (overflow-free). For finite features both
  losses are never NaN and their gradients finite; the value is +inf only where a tuple's
  loss, or the sum over tuples (the mean is a sum / count), exceeds the float range.
  """
  _checks.choice("loss", loss, LOSSES)
  base = _check_base(base)
  if np.ndim(fx_pos) == 3:
    fx_pos, fx_neg = _block_means(fx_pos, fx_neg)
  _check_tuples(fx, fx_pos, fx_neg)
  if loss == "logistic":
    return _global_mean(logistic_tuple_losses(fx, fx_pos, fx_neg, base), axis_name)
  return hinge_loss(_overflow_free_scores(fx, fx_pos, fx_neg), axis_name=axis_name)


def _check_labels(labels, num_rows: int) -> None:
  _checks.rank("labels", labels, 1)
  if np.shape(labels)[0] != num_rows:
    raise ValueError(f"labels must have shape ({num_rows},) to match features, got "
                     f"{np.shape(labels)}")
  if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
    raise ValueError(f"labels must be integers, got dtype {jnp.asarray(labels).dtype}")


def mean_classifier(features: jax.Array, labels: jax.Array, num_classes: int, *,
                    axis_name: Optional[str] = None) -> jax.Array:
  """Class means `μ_c = mean_{x: label c} f(x)`, shape `[C, d]` (zero for an absent class).

  The mean classifier of Arora et al. is the linear map `W` whose rows are `μ_c`. Labels
  outside [0, C) are ignored. With `axis_name`, sums and counts are all-reduced.
  """
  _checks.rank("features", features, 2)
  _check_labels(labels, np.shape(features)[0])
  num_classes = _checks.positive_int("num_classes", num_classes)
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=features.dtype)
  sums = one_hot.T @ features
  counts = jnp.sum(one_hot, axis=0)
  if axis_name is not None:
    sums, counts = jax.lax.psum((sums, counts), axis_name)
  return sums / jnp.maximum(counts, 1.0)[:, None]


def supervised_multiway_loss(features: jax.Array, labels: jax.Array, task_classes: jax.Array,
                             mu: jax.Array, *, loss: str = "logistic", base: float = 2.0,
                             axis_name: Optional[str] = None) -> jax.Array:
  """The (k+1)-way mean-classifier loss L^μ_sup(T, f) of Arora et al. (2019).

  For a task `T = {c_1..c_{k+1}}` (distinct classes) and a sample x of class c ∈ T the
  margins are those of the linear classifier `W f(x)` with rows `μ_c`:

      v_{c'} = μ_cᵀ f(x) - μ_{c'}ᵀ f(x),    c' ∈ T \\ {c}      (k margins)

  and the loss is `ℓ(v)` (logistic in base `base`, or hinge), averaged over the samples whose
  label lies in T, i.e. over the empirical class distribution restricted to T. Samples of
  other classes are ignored; a task with no sample gives 0.

  Args:
    features: `[M, d]` features f(x); labels: `[M]` integer classes.
    task_classes: `[k+1]` distinct class ids, or `[n_tasks, k+1]` (the mean over tasks).
    mu: `[C, d]` class means (see `mean_classifier`).
  """
  _checks.choice("loss", loss, LOSSES)
  base = _check_base(base)
  _checks.rank("features", features, 2)
  _check_labels(labels, np.shape(features)[0])
  _checks.rank("mu", mu, 2)
  if np.shape(mu)[1] != np.shape(features)[1]:
    raise ValueError(f"mu must have shape (C, {np.shape(features)[1]}) to match features, got "
                     f"{np.shape(mu)}")
  if np.ndim(task_classes) not in (1, 2) or np.shape(task_classes)[-1] < 2:
    raise ValueError("task_classes must have shape (k+1,) or (n_tasks, k+1) with k+1 >= 2, got "
                     f"{np.shape(task_classes)}")
  tasks = jnp.atleast_2d(jnp.asarray(task_classes))
  if not jnp.issubdtype(tasks.dtype, jnp.integer):
    raise ValueError(f"task_classes must be integers, got dtype {tasks.dtype}")
  if not isinstance(tasks, jax.core.Tracer):
    t_np = np.asarray(tasks)
    if np.any(t_np < 0) or np.any(t_np >= np.shape(mu)[0]):
      raise ValueError(f"task_classes must lie in [0, {np.shape(mu)[0]}) (rows of mu), got "
                       f"{t_np.tolist()}")
    if any(len(set(row.tolist())) != len(row) for row in t_np):
      raise ValueError(f"task_classes must hold distinct classes per task, got {t_np.tolist()}")

  scores = features @ mu.T  # [M, C]: (W f(x))_c
  task_scores = scores[:, tasks]  # [M, n_tasks, k+1]
  own = labels[:, None, None] == tasks[None, :, :]
  in_task = jnp.any(own, axis=2)  # [M, n_tasks]
  own_score = jnp.sum(jnp.where(own, task_scores, 0.0), axis=2, keepdims=True)
  v = own_score - task_scores
  if loss == "logistic":
    per_sample = _logistic_rows(v, base, ~own)
  else:
    per_sample = _hinge_rows(v, ~own)
  total = jnp.sum(jnp.where(in_task, per_sample, 0.0), axis=0)
  count = jnp.sum(in_task, axis=0).astype(per_sample.dtype)
  if axis_name is not None:
    total, count = jax.lax.psum((total, count), axis_name)
  return jnp.mean(total / jnp.maximum(count, 1.0))
