"""What a run watches while it trains: an online linear probe and collapse diagnostics.

- Online linear probe (as solo-learn trains one, da Costa et al. 2022): a linear classifier
  `logits = h W + b` on the encoder features h of the first view, detached
  (`stop_gradient`), trained inside the training step with its own optimiser on the batch's
  labels. Its loss is the mean cross-entropy over the labelled rows L of the global batch
  (rows labelled -1, e.g. STL-10's unlabelled images, have no label and are left out),

      L(W, b) = (1/|L|) Σ_{i ∈ L} [logsumexp_c (h_i W + b)_c - (h_i W + b)_{y_i}],

  so under `shard_map` the gradient is the global one (a psum of the per-device sums), and its
  accuracy is `psum(correct) / psum(labelled rows)` (NaN for a batch without labels, whose
  loss and gradient are 0). W and b start at zero (the problem is convex: no
  symmetry to break). Its training accuracy tracks how linearly separable the features are
  without any extra pass over the data; the stop-gradient leaves the encoder's update exactly
  what it is without the probe.
- RankMe (Garrido et al. 2023, "RankMe: Assessing the downstream performance of pretrained
  self-supervised representations by their rank"): with σ_1..σ_K the singular values of the
  embedding matrix Z [B, d] (K = min(B, d)) and p_k = σ_k / Σ_j σ_j + ε,

      RankMe(Z) = exp(-Σ_k p_k log p_k),   ε = 1e-7 (the paper's),

  a smooth effective rank in [1, K]: r equal non-zero singular values give RankMe ≈ r.
  Dimensional collapse shows as RankMe far below d.
- The mean per-dimension standard deviation of the L2-normalised projections (Chen & He
  2021, "Exploring Simple Siamese Representation Learning", Section 4.1):
  `mean_j std_i(z_ij / ‖z_i‖)` over the batch (population std): about 1/√d for well spread
  projections, 0 when they collapse to one point.

The diagnostics are functions of the global batch. Given global arrays (the step's
`metrics['embeddings']`, sharded over the data axis), jit them as they are; inside
`shard_map`, pass `axis_name`: RankMe gathers the rows (the singular values need the whole
matrix; a psummed Gram matrix Z^T Z would square their condition number), the std psums its
sufficient statistics (Σ u, Σ u², the row count).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from contrax import _checks, pairs

__all__ = [
    "RANKME_EPS", "OnlineProbe", "init_probe", "probe_logits", "probe_loss", "probe_step",
    "rankme", "normalized_std", "collapse_diagnostics",
]

RANKME_EPS = 1e-7


class OnlineProbe(NamedTuple):
  """What the training step needs to train an online linear probe: the number of classes and
  the probe's own optax optimiser (separate from the encoder's)."""
  num_classes: int
  optimizer: optax.GradientTransformation


def init_probe(probe: OnlineProbe, feature_dim: int) -> dict:
  """`{'params': {'kernel' [feature_dim, C], 'bias' [C]} (zeros), 'opt_state': ...}`."""
  num_classes = _checks.positive_int("num_classes", probe.num_classes)
  feature_dim = _checks.positive_int("feature_dim", feature_dim)
  params = {"kernel": jnp.zeros((feature_dim, num_classes), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}
  return {"params": params, "opt_state": probe.optimizer.init(params)}


def probe_logits(params: dict, features: jax.Array) -> jax.Array:
  """`features @ kernel + bias` (`[b, C]`, float32)."""
  return jnp.asarray(features, jnp.float32) @ params["kernel"] + params["bias"]


def _global_sum(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  total = jnp.sum(x)
  return total if axis_name is None else jax.lax.psum(total, axis_name)


def probe_loss(params: dict, features: jax.Array, labels: jax.Array, *,
               axis_name: Optional[str] = None) -> tuple[jax.Array, jax.Array]:
  """`(mean cross-entropy, accuracy)` of the probe over the labelled rows (label >= 0) of the
  global batch; `features` are detached here, so no gradient reaches the encoder."""
  logits = probe_logits(params, jax.lax.stop_gradient(features))
  labels = jnp.asarray(labels, jnp.int32)
  labelled = (labels >= 0).astype(jnp.float32)
  rows = _global_sum(labelled, axis_name)
  cross_entropy = optax.losses.softmax_cross_entropy_with_integer_labels(
      logits, jnp.maximum(labels, 0)) * labelled
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return (_global_sum(cross_entropy, axis_name) / jnp.maximum(rows, 1.0),
          jax.lax.stop_gradient(_global_sum(correct, axis_name) / rows))


def probe_step(state: dict, probe: OnlineProbe, features: jax.Array, labels: jax.Array, *,
               axis_name: Optional[str] = None) -> tuple[dict, dict]:
  """One optimiser step of the probe on `(stop_gradient(features), labels)`; returns the new
  `{'params', 'opt_state'}` and `{'probe_loss', 'probe_accuracy'}` (before the update)."""
  def loss_of(params):
    return probe_loss(params, features, labels, axis_name=axis_name)

  (loss, accuracy), grads = jax.value_and_grad(loss_of, has_aux=True)(state["params"])
  updates, opt_state = probe.optimizer.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  return ({"params": params, "opt_state": opt_state},
          {"probe_loss": loss, "probe_accuracy": accuracy})


def rankme(embeddings: jax.Array, *, eps: float = RANKME_EPS,
           axis_name: Optional[str] = None) -> jax.Array:
  """RankMe of the global `[B, d]` matrix (this device's rows under `axis_name`), computed in
  float32: `exp(-Σ_k p_k log p_k)` with `p_k = σ_k / Σ_j σ_j + eps`."""
  _checks.rank("embeddings", embeddings, 2)
  eps = _checks.non_negative("eps", eps)
  z = pairs.all_gather_rows(jnp.asarray(embeddings, jnp.float32), axis_name)
  singular = jnp.linalg.svd(z, compute_uv=False)
  p = singular / jnp.maximum(jnp.sum(singular), jnp.finfo(jnp.float32).tiny) + eps
  value = jnp.exp(-jnp.sum(p * jnp.log(p)))
  # Every device computed it from the same gathered rows; the mean makes that visible to
  # shard_map's replication check (the value is returned replicated).
  return value if axis_name is None else jax.lax.pmean(value, axis_name)


def normalized_std(projections: jax.Array, *, axis_name: Optional[str] = None) -> jax.Array:
  """`mean_j std_i(u_ij)` of `u_i = z_i / ‖z_i‖` over the global batch (population std, from
  the psummed Σ u, Σ u² and row count)."""
  _checks.rank("projections", projections, 2)
  u = pairs.l2_normalize(jnp.asarray(projections, jnp.float32))
  stats = jnp.concatenate([jnp.sum(u, 0), jnp.sum(u * u, 0), jnp.full((1,), u.shape[0],
                                                                       jnp.float32)])
  if axis_name is not None:
    stats = jax.lax.psum(stats, axis_name)
  d = u.shape[1]
  rows = stats[-1]
  mean, mean_square = stats[:d] / rows, stats[d:2 * d] / rows
  return jnp.mean(jnp.sqrt(jnp.maximum(mean_square - mean * mean, 0.0)))


def collapse_diagnostics(features: jax.Array, projections: jax.Array, *,
                         axis_name: Optional[str] = None) -> dict:
  """`{'rankme': RankMe of the encoder features (the representations Garrido et al. score),
  'rankme_projections': RankMe of the projections, 'projection_std': normalized_std}`."""
  return {"rankme": rankme(features, axis_name=axis_name),
          "rankme_projections": rankme(projections, axis_name=axis_name),
          "projection_std": normalized_std(projections, axis_name=axis_name)}
