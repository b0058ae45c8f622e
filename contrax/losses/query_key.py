"""Query-key InfoNCE: queries scored against their own key, other keys and a queue of past keys.

The objective of MoCo (He et al. 2020, *Momentum Contrast for Unsupervised Visual
Representation Learning*; Chen et al. 2020, *Improved Baselines with Momentum Contrastive
Learning*, MoCo v2) and of NNCLR (Dwibedi et al. 2021, *With a Little Help from My Friends:
Nearest-Neighbor Contrastive Learning of Visual Representations*). Query i (a row of `q`) has
one positive, key i (the same row of `k`), and N negatives: the other B - 1 keys of the global
batch (`batch_negatives=True`; MoCo v3, NNCLR) and/or the K rows of a queue (MoCo v1/v2, where
the batch's other keys are not negatives). With unit rows (both normalised here), temperature
t, HCL hardness β >= 0 and debiasing prior τ⁺ in [0, 1):

    s_ij  = q_iᵀ c_j over the columns c = [k_1 .. k_B, queue_1 .. queue_K]
    w_ij  = softmax_j(β s_ij / t) over i's N negatives          (HCL; β = 0: uniform 1/N)
    pos_i = exp(s_i,i / t),  neg_i = N Σ_j w_ij exp(s_ij / t)
    Ng_i  = max((neg_i - τ⁺ N pos_i) / (1 - τ⁺), N exp(-1/t))  (τ⁺ > 0; Ng_i = neg_i at τ⁺ = 0)
    loss  = (1/B) Σ_i -log(pos_i / (pos_i + Ng_i))

At β = 0, τ⁺ = 0 this is the cross-entropy of the logits `[s_i,i, s_i,neg...] / t` with label 0
(MoCo's code). The weights are HCL's (Robinson et al. 2021, `contrax.weights.hcl`: the same
masked softmax, here over batch and queue negatives together) and τ⁺ is Chuang et al. 2020's,
as in `contrax.losses.infonce`. HCL-OT's balanced coupling (`contrax.weights.ot`) is not
offered: its column marginals are over the batch's own 2B points, which a queue of other points
does not have; the semi-relaxed coupling it generalises is HCL with β = 2t/ε.

With `axis_name` (inside `shard_map`), each device holds its b query and key rows; the keys are
all-gathered (batch negatives only) and the mean is over the global batch, so value and
gradients equal the single-device loss on the global batch. The queue carries no gradient.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from contrax import _checks
from contrax import pairs as pairs_lib
from contrax._numerics import NEG_INF, masked_softmax, safe_log
from contrax.losses._common import debiased_log_negatives

__all__ = ["query_key_infonce", "gather_rows"]


def gather_rows(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """The global `[B, ...]` rows of the per-device `[b, ...]` rows `x`, in device order, as a
  device-invariant array (every device holds the same values, as in `contrax.pairs.build`;
  what a replicated state such as a queue may store). Identity without `axis_name`."""
  if axis_name is None:
    return x
  to = "invarying" if pairs_lib._varies_over(x, axis_name) else "varying"
  return jax.lax.all_gather(x, axis_name, axis=0, tiled=True, to=to)


def query_key_infonce(q: jax.Array, k: jax.Array, *, queue: Optional[jax.Array] = None,
                      batch_negatives: bool = True, temperature=0.2, beta: float = 0.0,
                      tau_plus: float = 0.0, stop_gradient_weights: bool = False,
                      axis_name: Optional[str] = None) -> jax.Array:
  """Query-key InfoNCE (module docstring); returns the global mean over the B queries.

  Args:
    q: `[b, D]` queries (this device's rows); L2-normalised here.
    k: `[b, D]` keys, row i the positive of query i; L2-normalised here. Gradients flow into
      them (NNCLR's predictions); pass `jax.lax.stop_gradient(k)` for a momentum encoder's.
    queue: optional `[K, D]` past keys (the same on every device), extra negatives of every
      query; L2-normalised here, no gradient.
    batch_negatives: the other B - 1 keys of the global batch are negatives (MoCo v3,
      NNCLR); False keeps only the queue (MoCo v1/v2).
    temperature: t > 0 (MoCo v2: 0.2; NNCLR: 0.1).
    beta: HCL hardness β >= 0 of the negative weights; 0 is uniform (plain InfoNCE).
    tau_plus: debiasing prior τ⁺ in [0, 1) (HCL uses 0.1 with β > 0).
    stop_gradient_weights: treat the HCL weights as constants (the official HCL code does not).
    axis_name: the data axis under `shard_map`, or None.

  Example:
    >>> q = jnp.eye(4); queue = -jnp.eye(4)
    >>> float(query_key_infonce(q, q, queue=queue, batch_negatives=False)) < 1e-3
    True
  """
  pairs_lib.check_views(q, k)
  pairs_lib.check_finite("q", q)
  pairs_lib.check_finite("k", k)
  t = _checks.check_temperature(temperature)
  beta = _checks.non_negative("beta", beta)
  tau = _checks.check_tau_plus(tau_plus)
  if not isinstance(batch_negatives, bool):
    raise TypeError(f"batch_negatives must be a bool, got {batch_negatives!r}")
  b = q.shape[0]
  big_b = b if axis_name is None else b * jax.lax.axis_size(axis_name)
  q, k = pairs_lib.l2_normalize(q), pairs_lib.l2_normalize(k)
  log_pos = jnp.sum(q * k, axis=1) / t
  logit_blocks: list[jax.Array] = []
  masks: list[jax.Array] = []
  if batch_negatives:
    keys = gather_rows(k, axis_name)
    own = pairs_lib.device_offset(b, axis_name) + jnp.arange(b)
    logit_blocks.append(q @ keys.T / t)
    masks.append(jnp.arange(big_b)[None, :] != own[:, None])
  if queue is not None:
    _checks.rank("queue", queue, 2)
    if queue.shape[1] != q.shape[1]:
      raise ValueError(f"queue must have {q.shape[1]} columns like q, got shape {queue.shape}")
    bank = jax.lax.stop_gradient(pairs_lib.l2_normalize(queue))
    logit_blocks.append(q @ bank.T / t)
    masks.append(jnp.ones((b, queue.shape[0]), bool))
  num_negatives = (big_b - 1 if batch_negatives else 0) + (0 if queue is None else queue.shape[0])
  if num_negatives < 1:
    raise ValueError("query_key_infonce needs at least one negative: a queue, or "
                     "batch_negatives=True with a global batch of >= 2 rows")
  logits = jnp.concatenate(logit_blocks, axis=1)
  negative = jnp.concatenate(masks, axis=1)
  if beta == 0.0:
    log_neg = jax.nn.logsumexp(jnp.where(negative, logits, NEG_INF), axis=1)
  else:
    weights = masked_softmax(beta * logits, negative)
    if stop_gradient_weights:
      weights = jax.lax.stop_gradient(weights)
    log_neg = math.log(num_negatives) + jax.nn.logsumexp(
        jnp.where(negative, logits + safe_log(weights), NEG_INF), axis=1)
  log_ng = debiased_log_negatives(log_neg, log_pos, tau, num_negatives, t)
  total = jnp.sum(jax.nn.softplus(log_ng - log_pos))  # -log(pos / (pos + Ng)), row by row
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
  return total / big_b
