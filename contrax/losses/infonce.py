"""The InfoNCE family with weighted negatives: one general form, many losses.

For anchor i with positive p(i), negative weights `w_ij >= 0` summing to 1 over the
N = 2B - 2 negatives (plus Q external columns when a queue is given), and debiasing
prior `tau_plus` in [0, 1):

    pos_i = exp(s_{i,p(i)} / t)
    neg_i = N * sum_j w_ij exp(s_ij / t)
    Ng_i  = max((neg_i - tau_plus * N * pos_i) / (1 - tau_plus), N exp(-1/t))   (tau_plus > 0)
    l_i   = -log(pos_i / (pos_i + Ng_i))              (decoupled: -s_{i,p(i)}/t + log Ng_i)
    loss  = mean_i l_i

Everything is computed in log space with masks (no gathers, no `e^{1/t}`), so the loss and
its gradient are finite at every temperature and for every finite input, zero vectors
included. Special cases: uniform weights and tau_plus = 0 give SimCLR's NT-Xent (Chen et
al. 2020); tau_plus > 0 gives Debiased CL (Chuang et al. 2020); `contrax.weights.hcl`
weights give HCL (Robinson et al. 2021); `contrax.weights.ot` weights give HCL-OT (Jiang et
al. 2023).

`infonce_pairs` reads the batch geometry (`contrax.pairs.Pairs`: local rows × all-gathered
global columns, similarities computed once); `infonce(z1, z2, ...)` builds it for you. With
`axis_name` (inside `shard_map`) the returned value is the global mean, identical on every
device and equal to the single-device loss on the concatenated batch.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from contrax import _checks
from contrax import pairs as pairs_lib
from contrax._numerics import NEG_INF, safe_log
from contrax.losses import _slab_ntxent, tiled
from contrax.losses._common import check_weights, debiased_log_negatives

def infonce_pairs(pairs: pairs_lib.Pairs, *, temperature=0.5,
                  weights: Optional[jax.Array] = None, tau_plus: float = 0.0,
                  decoupled: bool = False, queue: Optional[jax.Array] = None) -> jax.Array:
  """Weighted-negative InfoNCE (module docstring) of the geometry `pairs`; returns a scalar.

  Args:
    pairs: the batch geometry (`contrax.pairs.build`; normalised rows for the usual loss).
    temperature: t > 0 (a number, or a traced scalar, e.g. a learnable temperature).
    weights: optional `[2b, 2B (+Q)]` negative weights (`contrax.weights`), rows summing to 1
      over each anchor's negatives; None means uniform (1/N). Self and positive columns are
      ignored. Gradients flow through the weights unless the caller applies
      `jax.lax.stop_gradient` (HCL's official code differentiates through them; HCL-OT's
      treats them as constants).
    tau_plus: debiasing class prior in [0, 1) (Chuang et al. 2020); 0 disables the clamp.
    decoupled: drop the positive from the denominator (Yeh et al. 2022).
    queue: optional `[Q, D]` external negatives (memory bank, MoCo-style); they are
      L2-normalised, carry no gradient and count as Q extra negatives of every anchor.
  """
  t = _checks.check_temperature(temperature)
  tau = _checks.check_tau_plus(tau_plus)
  concrete_t = not isinstance(t, jax.core.Tracer)
  if weights is None and queue is None and tau == 0.0 and concrete_t:
    # The training path: hand-written forward and backward on the local slab (the sharded
    # step and a single device alike); a traced temperature takes the autodiff path below.
    if pairs.num_negatives < 1:
      raise ValueError("InfoNCE needs at least one negative: use a global batch of >= 2 images "
                       "or a queue")
    return _slab_ntxent.ntxent_mean(pairs.rows, pairs.cols, pairs.row_index, temperature=t,
                                    decoupled=bool(decoupled), axis_name=pairs.axis_name)
  sims, negative_mask, pos_mask = pairs.sims, pairs.negative_mask, pairs.pos_mask
  num_neg = pairs.num_negatives
  if queue is not None:
    _checks.rank("queue", queue, 2)
    if queue.shape[1] != pairs.rows.shape[1]:
      raise ValueError(f"queue must have {pairs.rows.shape[1]} columns like z1, got shape "
                       f"{queue.shape}")
    bank = jax.lax.stop_gradient(pairs_lib.l2_normalize(queue))
    sims = jnp.concatenate([sims, pairs.rows @ bank.T], axis=1)
    extra = jnp.ones((negative_mask.shape[0], queue.shape[0]), bool)
    negative_mask = jnp.concatenate([negative_mask, extra], axis=1)
    pos_mask = jnp.concatenate([pos_mask, jnp.zeros_like(extra)], axis=1)
    num_neg += queue.shape[0]
  if num_neg < 1:
    raise ValueError("InfoNCE needs at least one negative: use a global batch of >= 2 images "
                     "or a queue")
  logits = sims / t
  log_pos = jnp.sum(jnp.where(pos_mask, logits, 0.0), axis=1)
  if weights is None:
    log_neg = jax.nn.logsumexp(jnp.where(negative_mask, logits, NEG_INF), axis=1)
  else:
    check_weights(weights, logits.shape, negative_mask)
    scores = jnp.where(negative_mask, logits + safe_log(weights), NEG_INF)
    log_neg = math.log(num_neg) + jax.nn.logsumexp(scores, axis=1)
  log_ng = debiased_log_negatives(log_neg, log_pos, tau, num_neg, t)
  if decoupled:
    per_row = log_ng - log_pos
  else:
    # log(1 + Ng/pos), not logaddexp(log_pos, log_ng) - log_pos: keeps relative precision
    # when the loss is tiny (e.g. clamped Ng at small t), where the difference rounds to 0.
    per_row = jax.nn.softplus(log_ng - log_pos)
  return pairs.global_mean(per_row)


def infonce(z1: jax.Array, z2: jax.Array, *, temperature=0.5,
            weights: Optional[jax.Array] = None, tau_plus: float = 0.0,
            decoupled: bool = False, queue: Optional[jax.Array] = None,
            axis_name: Optional[str] = None, implementation: str = "dense",
            tile_size: Optional[int] = None) -> jax.Array:
  """Weighted-negative InfoNCE (module docstring) on two views; returns a scalar.

  `infonce_pairs(contrax.pairs.build(z1, z2, axis_name=axis_name), ...)`, or the tiled loss.

  Args:
    z1, z2: `[b, D]` embeddings of the two views (L2-normalised here). Concrete inputs with a
      NaN or inf raise ValueError (traced ones are not inspected).
    temperature, weights, tau_plus, decoupled, queue: as in `infonce_pairs`.
    axis_name: data axis for global negatives under `shard_map`.
    implementation: "dense" builds the `[2b, 2B]` similarity slab; "tiled" computes the same
      loss and gradients in `tile_size`-square tiles with memory linear in the batch, and
      with `axis_name` passes column blocks around a ring of devices
      (`contrax.losses.tiled`). "tiled" takes uniform weights only (for HCL use
      `tiled.tiled_infonce(..., beta=...)`) and no queue.
    tile_size: tile edge for implementation="tiled" (default `tiled.DEFAULT_TILE_SIZE`).

  Example:
    >>> z1 = jnp.eye(4); z2 = jnp.eye(4)
    >>> float(infonce(z1, z2, temperature=0.5)) > 0
    True
  """
  _checks.choice("implementation", implementation, ("dense", "tiled"))
  pairs_lib.check_finite("z1", z1)
  pairs_lib.check_finite("z2", z2)
  if implementation == "tiled":
    if weights is not None:
      raise ValueError("implementation='tiled' takes no weights matrix (it is the [2b, 2B] slab "
                       "that tiling avoids); use weights=None (uniform), or for HCL weights "
                       "contrax.losses.tiled.tiled_infonce(..., beta=...)")
    if queue is not None:
      raise ValueError("implementation='tiled' does not support queue; use implementation='dense'")
    extra = {} if tile_size is None else {"tile_size": tile_size}
    return tiled.tiled_infonce(z1, z2, temperature=temperature, tau_plus=tau_plus,
                               decoupled=decoupled, axis_name=axis_name, **extra)
  if tile_size is not None:
    raise ValueError("tile_size applies to implementation='tiled' only, got "
                     f"tile_size={tile_size!r} with implementation='dense'")
  pairs = pairs_lib.build(z1, z2, axis_name=axis_name)
  return infonce_pairs(pairs, temperature=temperature, weights=weights, tau_plus=tau_plus,
                       decoupled=decoupled, queue=queue)


def ntxent(z1, z2, *, temperature: float = 0.5, axis_name: Optional[str] = None):
  """SimCLR's NT-Xent (Chen et al. 2020, arXiv 2002.05709): uniform weights, no debiasing."""
  return infonce(z1, z2, temperature=temperature, axis_name=axis_name)


def supervised_infonce(z1: jax.Array, z2: jax.Array, labels: jax.Array, *,
                       temperature: float = 0.5, axis_name: Optional[str] = None) -> jax.Array:
  """Multi-positive (SupCon-style, Khosla et al. 2020) InfoNCE; labels define positives.

  Every row j != i with `label_j == label_i` (both views) is a positive of anchor i:

      l_i = -(1/|P(i)|) sum_{p in P(i)} [ s_ip/t - logsumexp_{j != i} s_ij/t ]

  With distinct labels (one positive per anchor: the other view) this is NT-Xent. Memory
  is O(b · B) per device, unlike optax's `ntxent`, which is O(B^3).

  Args:
    labels: `[b]` integer labels of the images (both views share them).
  """
  t = _checks.check_temperature(temperature)
  _checks.rank("labels", labels, 1)
  if labels.shape[0] != np.shape(z1)[0]:
    raise ValueError(f"labels must have shape ({np.shape(z1)[0]},) to match z1, got {labels.shape}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  pairs_lib.check_finite("z1", z1)
  pairs_lib.check_finite("z2", z2)
  pairs = pairs_lib.build(z1, z2, axis_name=axis_name)
  global_labels = pairs_lib.all_gather_rows(labels, axis_name)
  col_labels = jnp.concatenate([global_labels, global_labels])
  row_labels = jnp.concatenate([labels, labels])
  logits = pairs.sims / t
  not_self = ~pairs.self_mask
  log_denominator = jax.nn.logsumexp(jnp.where(not_self, logits, NEG_INF), axis=1)
  positive = (col_labels[None, :] == row_labels[:, None]) & not_self
  count = jnp.sum(positive, axis=1)
  mean_pos_logit = jnp.sum(jnp.where(positive, logits, 0.0), axis=1) / count
  per_row = log_denominator - mean_pos_logit
  return pairs.global_mean(per_row)
