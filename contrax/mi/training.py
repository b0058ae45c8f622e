"""Training critics (and encoders) against the MI bounds of `contrax.mi.estimators`.

- `estimate_mi`: the MI of paired samples `(x, y)` with settings that are stable on the
  known-MI tasks of `contrax.mi.tasks` (the entry point for users).
- `critic_training`: Adam-style training of one critic per training objective ("head") on
  sampled pairs, as a `lax.scan` body; `readouts` gives every estimate a trained critic
  supports; `fresh_critic_estimate` trains a fresh critic on a frozen representation.
- `masked_infonce`, `pair_scores`, `infonce_step`: InfoNCE training of a shared encoder
  with a fixed dot-product or negative-distance critic (several batch sizes in one program).
- `chunked_scan`: any of these `lax.scan` bodies run in jitted chunks of steps (progress
  between chunks, one compile per chunk length).
- `probe_features`, `bit_probe_accuracies`: linear probes of (stacked) representations on the
  bits of `contrax.mi.tasks.label_channel` pairs.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from contrax import _checks, evaluate
from contrax.mi import critics as critics_lib
from contrax.mi import estimators, tasks

SMILE_TAUS = {"smile-1": 1.0, "smile-5": 5.0, "smile-inf": math.inf}
"""The clip τ of every SMILE estimator name of `ESTIMATORS`."""


# ----------------------------------------------------------------------------- critic training


def readout_head(estimator: str) -> str:
  """The training objective whose critic gives `estimator`'s readout (SMILE: JS)."""
  _checks.choice("estimator", estimator, estimators.ESTIMATORS)
  return "js" if estimator.startswith("smile-") else estimator


def readouts(name: str, scores: jax.Array, state: Optional[estimators.MineState]):
  """`(surrogate, new MINE state, {readout: value})` for a critic trained as `name`: the
  JS-trained critic also gives the SMILE(τ) readouts."""
  value, state = estimators.objective(name, scores, state)
  values = {name: value}
  if name == "js":
    fixed = jax.lax.stop_gradient(scores)
    for readout, tau in SMILE_TAUS.items():
      values[readout] = estimators.smile_estimate(fixed, tau)
  return value, state, values


def critic_training(critic: nn.Module, heads: Sequence[str], sample: Callable,
                    optimizer: optax.GradientTransformation):
  """`(init, step)` for training one critic per head on pairs `sample(key, x_in) -> (x, y)`.

  The heads' parameters are stacked and the critic applied with `vmap` (one traced network
  for all heads); head h maximises `objective(h, ·)` (NWJ, DV and MINE heads diverge easily:
  see `contrax.mi.estimators`). `init(key, x_in) -> carry`; `step(carry, (key, x_in)) ->
  (carry, {readout: value})` is a `lax.scan` body.
  """
  apply_all = jax.vmap(critic.apply, in_axes=(0, None, None))

  def init(key, x_in):
    x, y = sample(key, x_in)
    params = jax.vmap(critic.init, in_axes=(0, None, None))(
        jax.random.split(key, len(heads)), x, y)
    return params, optimizer.init(params), estimators.mine_init()

  def loss(params, mine_state, x, y):
    scores = apply_all(params, x, y)
    total, values, new_mine = 0.0, {}, mine_state
    for i, h in enumerate(heads):
      value, state, head_values = readouts(h, scores[i], mine_state)
      if h == "mine":
        new_mine = state
      total = total - value
      values.update(head_values)
    return total, (new_mine, values)

  def step(carry, inputs):
    params, opt_state, mine_state = carry
    key, x_in = inputs
    x, y = sample(key, x_in)
    grads, (mine_state, values) = jax.grad(loss, has_aux=True)(params, mine_state, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, mine_state), values

  return init, step


def fresh_critic_estimate(features: Callable, key: jax.Array, *, estimator: str,
                          critic_batch: int, critic_steps: int, learning_rate: float,
                          eval_batch: int, eval_repeats: int) -> jax.Array:
  """The MI of a frozen representation, estimated by a *fresh* critic (traceable; vmap it
  over representations).

  `features(key, n) -> (f(x), f(y))` gives n feature pairs. A separable critic (hidden 128,
  embedding 32) is trained with `estimator`'s objective at batch `critic_batch` for
  `critic_steps` Adam steps; `estimator` is then read out on `eval_repeats` fresh batches of
  `eval_batch` pairs and averaged (nats).
  """
  critic = critics_lib.SeparableCritic(128, 32)
  head = readout_head(estimator)
  init, step = critic_training(critic, (head,), lambda k, _: features(k, critic_batch),
                               optax.adam(learning_rate))
  keys = jax.random.split(jax.random.fold_in(key, 1), critic_steps)
  (params, _, _), _ = jax.lax.scan(step, init(key, None), (keys, None))
  params = jax.tree.map(lambda p: p[0], params)

  def read(k):
    scores = critic.apply(params, *features(k, eval_batch))
    return readouts(head, scores, estimators.mine_init())[2][estimator]

  return jnp.mean(jax.vmap(read)(jax.random.split(jax.random.fold_in(key, 2), eval_repeats)))


# ----------------------------------------------------------------------------- estimate_mi


class MIEstimate(NamedTuple):
  """The result of `estimate_mi`.

  estimate: the bound on the held-out pairs, mean over held-out batches (nats).
  stderr: the standard error of that mean over the batches (0 with one batch).
  estimator: the bound read out. objective: the training objective ('infonce' or 'js').
  train_trace: `[steps]` the training objective per step (diagnostic of convergence).
  """
  estimate: float
  stderr: float
  estimator: str
  objective: str
  train_trace: np.ndarray


def _readout(estimator: str, scores: jax.Array) -> jax.Array:
  """The bound `estimator` of a fixed critic trained with `_training_objective(estimator)`."""
  if estimator == "infonce":
    return estimators.infonce(scores)
  if estimator in ("nwj", "js"):
    # The JS critic converges to log r; NWJ is tight at 1 + log r.
    return estimators.nwj(scores + 1.0)
  if estimator in ("dv", "mine"):
    return estimators.dv(scores)
  return estimators.smile_estimate(scores, SMILE_TAUS[estimator])


def _training_objective(estimator: str) -> str:
  return "infonce" if estimator == "infonce" else "js"


@functools.partial(jax.jit, static_argnames=("critic", "objective", "steps", "batch_size",
                                             "learning_rate", "clip_norm", "ema_decay"))
def _train_critic(key, x, y, *, critic, objective, steps, batch_size, learning_rate, clip_norm,
                  ema_decay):
  """Train `critic` on random batches of the rows of (x, y); returns (EMA params, trace)."""
  optimizer = optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(learning_rate))
  loss_of = estimators.infonce if objective == "infonce" else estimators.js_fgan
  init_key, step_key = jax.random.split(key)
  params = critic.init(init_key, x[:batch_size], y[:batch_size])

  def step(carry, k):
    params, ema, opt_state = carry
    rows = jax.random.randint(k, (batch_size,), 0, x.shape[0])
    value, grads = jax.value_and_grad(
        lambda p: -loss_of(critic.apply(p, x[rows], y[rows])))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
    return (params, ema, opt_state), -value

  (_, ema, _), trace = jax.lax.scan(step, (params, params, optimizer.init(params)),
                                    jax.random.split(step_key, steps))
  return ema, trace


@functools.partial(jax.jit, static_argnames=("critic", "estimator"))
def _held_out_bounds(params, x, y, *, critic, estimator):
  """The bound of each held-out batch: x, y are `[num_batches, K, d]`."""
  return jax.lax.map(lambda xy: _readout(estimator, critic.apply(params, *xy)), (x, y))


def estimate_mi(x, y, *, estimator: str = "infonce", critic: str = "separable",
                key: Optional[jax.Array] = None, steps: int = 4000, batch_size: int = 128,
                learning_rate: float = 1e-3, clip_norm: float = 1.0, ema_decay: float = 0.99,
                eval_fraction: float = 0.25, hidden_dim: int = 128,
                embed_dim: int = 32) -> MIEstimate:
  """Estimate `I(X; Y)` in nats from paired rows `x [n, d_x]`, `y [n, d_y]` with a trained critic.

  The critic (`critic` in `CRITICS`, built by `make_critic(critic, hidden_dim, embed_dim)`)
  is trained on the first `1 − eval_fraction` of the rows and the bound `estimator` is read
  out on the held-out rest, in batches of K = `batch_size` pairs (mean ± standard error
  over the batches). The settings are the ones that stay stable on the known-MI tasks, where
  training on NWJ, DV or MINE directly diverges (see `contrax.mi.estimators`):

  - the critic is trained with a bounded objective: InfoNCE for `estimator='infonce'`, the
    f-GAN Jensen–Shannon objective (whose maximiser is `log r`, r the density ratio) for
    every other bound; the bound is only *read out*: NWJ (and `js`) as `nwj(S + 1)`, DV and
    MINE (whose estimate is DV) as `dv(S)`, SMILE(τ) as `smile_estimate(S, τ)`;
  - Adam at `learning_rate` after clipping the gradient's global norm to `clip_norm`;
  - the read-out critic is an exponential moving average (`ema_decay`) of the iterates.

  Every bound is biased low by a finite critic and InfoNCE cannot exceed `log K`; NWJ and
  DV read-outs have a variance that grows like `e^I` (Song & Ermon 2020). On 20,000 pairs
  of correlated Gaussians of 2 nats in 4 dimensions, with the defaults, every estimator
  lands within 0.35 nats of the truth (measured: InfoNCE 1.87, NWJ and JS 1.70, DV, MINE and
  SMILE-∞ 1.81, SMILE-5 1.98) except SMILE-1, whose clip biases it up (2.39; tolerance
  0.45). Training on NWJ directly in the same setting (separable critic, learning rate 5e-3)
  ends at −15 nats.

  Rows are assumed i.i.d. pairs; shuffle them first if they are ordered.
  Returns an `MIEstimate`.
  """
  _checks.choice("estimator", estimator, estimators.ESTIMATORS)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  critics_lib._check_pairs(x, y)
  steps = _checks.positive_int("steps", steps)
  batch_size = _checks.positive_int("batch_size", batch_size)
  if batch_size < 2:
    raise ValueError(f"batch_size must be >= 2 (bounds need off-diagonal pairs), got {batch_size}")
  learning_rate = _checks.positive("learning_rate", learning_rate)
  clip_norm = _checks.positive("clip_norm", clip_norm)
  ema_decay = _checks.in_range("ema_decay", ema_decay, 0.0, 1.0)
  eval_fraction = _checks.in_range("eval_fraction", eval_fraction, 0.0, 1.0, include_low=False)
  model = critics_lib.make_critic(critic, hidden_dim=hidden_dim, embed_dim=embed_dim)
  n = x.shape[0]
  num_eval = int(round(eval_fraction * n))
  num_batches = num_eval // batch_size
  if num_batches < 1 or n - num_eval < batch_size:
    raise ValueError(f"x and y must hold enough rows for a training batch and a held-out batch "
                     f"of batch_size={batch_size} (eval_fraction={eval_fraction}), got {n} rows")
  key = jax.random.PRNGKey(0) if key is None else key
  objective = _training_objective(estimator)
  params, trace = _train_critic(key, x[:n - num_eval], y[:n - num_eval], critic=model,
                                objective=objective, steps=steps, batch_size=batch_size,
                                learning_rate=learning_rate, clip_norm=clip_norm,
                                ema_decay=ema_decay)
  held_x = x[n - num_eval:][:num_batches * batch_size].reshape(num_batches, batch_size, -1)
  held_y = y[n - num_eval:][:num_batches * batch_size].reshape(num_batches, batch_size, -1)
  bounds = np.asarray(_held_out_bounds(params, held_x, held_y, critic=model,
                                       estimator=estimator), np.float64)
  stderr = float(np.std(bounds, ddof=1) / math.sqrt(num_batches)) if num_batches > 1 else 0.0
  return MIEstimate(float(np.mean(bounds)), stderr, estimator, objective, np.asarray(trace))


# ----------------------------------------------------------------------------- encoder training


def masked_infonce(scores: jax.Array, num_valid) -> jax.Array:
  """`infonce` of the leading `num_valid × num_valid` block of `scores` (static shape: the
  other rows and columns are masked), so batch sizes can share one compiled program."""
  k = scores.shape[0]
  valid = jnp.arange(k) < num_valid
  per_row = jnp.diagonal(scores) - jax.nn.logsumexp(
      jnp.where(valid[None, :], scores, -jnp.inf), axis=1)
  return jnp.sum(jnp.where(valid, per_row, 0.0)) / num_valid + jnp.log(num_valid)


PAIR_CRITICS = {"dot": 0.0, "distance": 1.0}
"""Critics on a shared encoder's features, by their weight λ in `pair_scores`."""


def pair_scores(zx: jax.Array, zy: jax.Array, distance_weight=0.0) -> jax.Array:
  """`S_ij = z_xiᵀ z_yj − (λ/2)(‖z_xi‖² + ‖z_yj‖²)`: the dot-product critic (λ = 0) or the
  negative half squared distance `−½‖z_xi − z_yj‖²` (λ = 1). λ may be traced (vmapped)."""
  sq = lambda z: jnp.sum(jnp.square(z), axis=1)  # noqa: E731
  return zx @ zy.T - 0.5 * distance_weight * (sq(zx)[:, None] + sq(zy)[None, :])


def infonce_step(apply: Callable, sample_views: Callable, batch: int,
                 optimizer: optax.GradientTransformation) -> Callable:
  """A `lax.scan` body on carry `(params, opt_state)` and input `(key, num_valid,
  distance_weight)`: one optimizer step on the InfoNCE of `pair_scores(f(x), f(y), λ)`
  (shared encoder `f = apply(params, ·)`) over the first `num_valid` of `batch` sampled
  pairs `sample_views(key, batch)`. Outputs the training InfoNCE estimate (≤ log num_valid)."""

  def step(carry, inputs):
    params, opt_state = carry
    key, num_valid, distance_weight = inputs
    x, y = sample_views(key, batch)

    def loss(params):
      scores = pair_scores(apply(params, x), apply(params, y), distance_weight)
      return -masked_infonce(scores, num_valid)

    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), -value

  return step


# ----------------------------------------------------------------------------- loops and probes


@functools.partial(jax.jit, static_argnums=0)
def _scan(make_step, carry, keys, xs, consts):
  return jax.lax.scan(make_step(consts), carry, (keys, xs))


def chunked_scan(make_step: Callable, carry, keys: jax.Array, xs=None, consts=None, *,
                 chunk: int, on_chunk: Optional[Callable[[int], object]] = None):
  """`lax.scan(make_step(consts), carry, (keys, xs))`, run as jitted calls of `chunk` steps.

  Step t of the scan gets `(keys[t], xs[t])` (`xs`: a pytree of per-step arrays, or None).
  Large arrays the step needs (image pools) travel in `consts` as arguments of the jitted
  call, so they are not baked into the compiled program as constants; `make_step(consts)`
  returns the scan body. The program is compiled once per `make_step` (keep passing the same
  function object) and chunk length: a shorter last chunk compiles once more. Between calls
  `on_chunk(steps in the chunk)` reports progress (e.g. a tqdm bar's `update`).

  Returns the final carry and the per-step outputs stacked over all steps as NumPy arrays
  (None when `keys` is empty).
  """
  chunk = _checks.positive_int("chunk", chunk)
  num_steps = len(keys)
  for leaf in jax.tree.leaves(xs):
    if len(leaf) != num_steps:
      raise ValueError(f"xs must hold one entry per key ({num_steps}), got a leaf of shape "
                       f"{tuple(leaf.shape)}")
  outputs = []
  for start in range(0, num_steps, chunk):
    stop = min(start + chunk, num_steps)
    carry, out = _scan(make_step, carry, keys[start:stop],
                       jax.tree.map(lambda a: a[start:stop], xs), consts)
    outputs.append(jax.tree.map(np.asarray, out))
    if on_chunk is not None:
      on_chunk(stop - start)
  return carry, (jax.tree.map(lambda *a: np.concatenate(a), *outputs) if outputs else None)


def probe_features(apply: Callable, reps, channels: Sequence[tasks.LabelChannel],
                   key: jax.Array, num_pairs: int) -> list:
  """View-1 features of every representation and their bits, on `num_pairs` pairs of each
  label channel: `[(features [R, num_pairs, d], bits [num_pairs, n]) per channel]`.

  `reps` stacks R representations on the leading axis of its leaves; `apply(rep, x)` maps
  flattened views (`label_channel_views`) to features. Pair sets are drawn with
  `fold_in(key, channel index)`. Traceable (jit it with the representations' training).
  """
  num_pairs = _checks.positive_int("num_pairs", num_pairs)
  out = []
  for i, channel in enumerate(channels):
    x1, _, bits1, _ = tasks.sample_label_channel(jax.random.fold_in(key, i), channel, num_pairs)
    out.append((jax.vmap(apply, in_axes=(0, None))(reps, tasks.flatten_views(x1)), bits1))
  return out


def bit_probe_accuracies(probe_data: Sequence, bit_groups: dict) -> list[dict]:
  """Per representation, `{group: mean over the group's bits of the test accuracy of a
  linear probe on that bit}`.

  `probe_data` is `probe_features` of a train and a test channel: the train channel's features
  fit `contrax.evaluate.linear_probe` (standardised features, L2 chosen on a stratified
  validation split of the training features), the test channel's score it. `bit_groups`
  maps a name to a slice of the bits, e.g. `{"task": slice(0, 4), "nuisance": slice(4, None)}`.
  """
  if len(probe_data) != 2:
    raise ValueError(f"probe_data must hold a train and a test channel's features, got "
                     f"{len(probe_data)} entries")
  (train_f, train_b), (test_f, test_b) = [(np.asarray(f), np.asarray(b)) for f, b in probe_data]

  def accuracy(r, bits):
    train, test = train_b[:, bits], test_b[:, bits]
    return float(np.mean([
        evaluate.linear_probe(train_f[r], train[:, k], test_f[r], test[:, k],
                              num_classes=2)["accuracy"] for k in range(train.shape[1])]))

  return [{name: accuracy(r, bits) for name, bits in bit_groups.items()}
          for r in range(train_f.shape[0])]
