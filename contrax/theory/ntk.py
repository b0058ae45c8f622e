"""Empirical neural tangent kernel and lazy-training diagnostics (Merad et al. 2020).

For an encoder `f(θ, X)` with outputs `[n, d]`, stack the outputs row-major into a vector of
length `n·d` (entry `i·d + a` is output coordinate a of input i) and let `J = ∂ vec f / ∂θ`
be its Jacobian with respect to the *trained* parameters. The empirical NTK is

    Θ = J Jᵀ ∈ R^{n·d x n·d},    Θ[(i,a),(j,b)] = <∂f_a(x_i)/∂θ, ∂f_b(x_j)/∂θ>.

Two ways to compute it, neither of which materialises J:

- `empirical_ntk`: any function of a parameter pytree. Linearise once, then each column is
  `Θ e = J (Jᵀ e)`: a transposed-linear (vjp) pass followed by a jvp pass, mapped over the
  output basis in chunks (memory: `chunk_size` parameter-sized cotangents at a time).
- `layerwise_ntk`: dense networks (the `NTKMLP` and `AllenZhuMLP` of `contrax.models`). A
  kernel W used as `y = u @ W` contributes `∂f_a(x_i)/∂W = u_i ⊗ g_{ia}` with
  `g_{ia} = ∂f_a(x_i)/∂y_i`, so its block is the Hadamard product
  `Θ_W[(i,a),(j,b)] = (u_i · u_j)(g_{ia} · g_{jb})` and `Θ = Σ_W Θ_W`. This costs d backward
  passes and `(n·d)² · fan_out` flops per layer, instead of the `(n·d)² · #params` of a
  dense contraction, which is what makes width 4096 affordable on a CPU.

Diagnostics of the lazy (kernel) regime, which theory predicts shrink like `m^{-1/2}` with the
width m: `kernel_drift` `‖Θ(t) − Θ(0)‖_F / ‖Θ(0)‖_F` and `parameter_movement`
`‖W_l(t) − W_l(0)‖_F / ‖W_l(0)‖_F` per layer (relative to the whole layer at init, so that
zero-initialised biases stay finite); `min_eigenvalue` gives `λ_min(Θ)`, which the
convergence argument needs bounded away from zero (Allen-Zhu, Li & Song 2019; Du et al. 2019).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from contrax import _checks

PyTree = Any


def _flat_outputs(apply_fn: Callable[[PyTree, jax.Array], jax.Array], inputs: jax.Array):
  def flat(params):
    out = apply_fn(params, inputs)
    if out.ndim != 2:
      raise ValueError(f"apply_fn must return outputs of shape [n, d], got shape {out.shape}")
    return out.reshape(-1)
  return flat


def empirical_ntk(apply_fn: Callable[[PyTree, jax.Array], jax.Array], params: PyTree,
                  inputs: jax.Array, *, chunk_size: Optional[int] = None) -> jax.Array:
  """Empirical NTK `Θ = J Jᵀ` of the stacked outputs, shape `[n·d, n·d]`.

  Args:
    apply_fn: `(params, inputs) -> outputs [n, d]`; `params` are exactly the trained
      parameters (close over frozen ones).
    params: the parameter pytree at which J is taken.
    inputs: the n inputs (any shape `apply_fn` accepts).
    chunk_size: output-basis vectors processed together (memory `chunk_size` x #params);
      `None` processes all `n·d` at once.

  Column `(i, a)` is `J (Jᵀ e_{ia})`: a vjp then a jvp around one shared linearisation.
  Jit-compatible (`apply_fn` and `chunk_size` static).
  """
  if chunk_size is not None:
    _checks.positive_int("chunk_size", chunk_size)
  flat = _flat_outputs(apply_fn, inputs)
  outputs, jvp_fn = jax.linearize(flat, params)
  vjp_fn = jax.linear_transpose(jvp_fn, params)

  def column(basis_vector):
    (cotangent,) = vjp_fn(basis_vector)
    return jvp_fn(cotangent)

  basis = jnp.eye(outputs.size, dtype=outputs.dtype)
  # Θ is symmetric, so the stacked J Jᵀ e_k (rows) are its columns as well.
  return jax.lax.map(column, basis, batch_size=chunk_size)


def _layer_parts(model: nn.Module, variables: PyTree, inputs: jax.Array):
  """Layer inputs `u` and output gradients `g` (per output coordinate) of each trained kernel."""
  params = variables["params"]
  outputs, state = model.apply(variables, inputs, mutable=["intermediates", "perturbations"])
  sown = state.get("intermediates", {})
  perturbations = state.get("perturbations", {})
  names = sorted(params)
  for name in names:
    if (name not in sown or name not in perturbations or not hasattr(params[name], "ndim")
        or params[name].ndim != 2):
      raise ValueError(
          f"layerwise_ntk needs every trained parameter to be a dense kernel params[{name!r}] "
          "whose layer input the model sows into 'intermediates' and whose output it perturbs "
          f"under 'perturbations' with the same name; got params keys {names}, sown "
          f"{sorted(sown)}, perturbed {sorted(perturbations)}")

  def perturbed_outputs(shifts):
    return model.apply({**variables, "perturbations": shifts}, inputs)

  _, vjp_fn = jax.vjp(perturbed_outputs, perturbations)
  d = outputs.shape[-1]

  def gradients_for_coordinate(a):
    cotangent = jnp.zeros_like(outputs).at[:, a].set(1.0)
    return vjp_fn(cotangent)[0]

  # Outputs of different inputs are independent, so one backward pass per output
  # coordinate a gives g_{ia} for all i at once: grads[name] has shape [d, n, fan_out].
  grads = jax.vmap(gradients_for_coordinate)(jnp.arange(d))
  return {name: (sown[name][0], grads[name]) for name in names}, outputs.shape


@functools.partial(jax.jit, static_argnums=(0, 3))
def layerwise_ntk(model: nn.Module, variables: PyTree, inputs: jax.Array,
                  per_layer: bool = False):
  """Empirical NTK of a dense network wrt `variables['params']`, summed over layer blocks.

  `Θ[(i,a),(j,b)] = Σ_W (u_i · u_j)(g_{ia} · g_{jb})` (module docstring). The model must sow
  each trained kernel's layer input into 'intermediates' and perturb its pre-activation
  under 'perturbations', both under the kernel's name (as `contrax.models.NTKMLP` and
  `AllenZhuMLP` do); anything else raises ValueError. Collections other than 'params'
  (e.g. the frozen layers of `AllenZhuMLP`) are held fixed. Returns `[n·d, n·d]`, or a dict
  of the per-layer blocks when `per_layer=True`.
  """
  parts, (n, d) = _layer_parts(model, variables, inputs)
  blocks = {}
  for name, (layer_inputs, grads) in parts.items():
    input_gram = layer_inputs @ layer_inputs.T
    grad_gram = jnp.einsum("aim,bjm->iajb", grads, grads)
    blocks[name] = (input_gram[:, None, :, None] * grad_gram).reshape(n * d, n * d)
  if per_layer:
    return blocks
  return sum(blocks.values())


def min_eigenvalue(theta: jax.Array) -> jax.Array:
  """`λ_min(Θ)` of the symmetrised kernel `(Θ + Θᵀ) / 2`."""
  _checks.rank("theta", theta, 2)
  return jnp.linalg.eigvalsh(0.5 * (theta + theta.T))[0]


def kernel_drift(theta_t: jax.Array, theta_0: jax.Array) -> jax.Array:
  """Relative kernel change `‖Θ(t) − Θ(0)‖_F / ‖Θ(0)‖_F`."""
  _checks.same_shape(("theta_t", "theta_0"), theta_t, theta_0)
  return jnp.linalg.norm(theta_t - theta_0) / jnp.linalg.norm(theta_0)


def parameter_movement(params_t: PyTree, params_0: PyTree) -> dict[str, jax.Array]:
  """Relative movement of every parameter array, measured against its layer's size at init:

      movement(θ) = ‖θ(t) − θ(0)‖_F / ‖L(0)‖_F,

  where the layer L of an array is all the arrays of its parent node (a Flax `Dense` layer's
  `kernel` and `bias` together); an array at the top level of the tree is its own layer.
  This is `‖W_l(t) − W_l(0)‖_F / ‖W_l(0)‖_F` for the bias-free kernels of `NTKMLP` and
  `AllenZhuMLP`, and it stays finite for zero-initialised arrays (every `nn.Dense` bias),
  whose own norm at init is 0: a bias moved by Δ reports `‖Δ‖ / ‖kernel(0)‖` (with a zero
  bias). A layer that is entirely zero at init reports the absolute movement `‖θ(t) − θ(0)‖_F`.

  Keys are the '/'-joined pytree paths (e.g. 'W2', 'Dense_0/bias'); the lazy-regime
  statistic (which theory predicts shrinks like `m^{-1/2}` with the width m) is the maximum
  over the returned values.
  """
  flat_t, tree_t = jax.tree_util.tree_flatten_with_path(params_t)
  flat_0, tree_0 = jax.tree_util.tree_flatten_with_path(params_0)
  # jaxlib ships no stub for its pytree module, so mypy cannot resolve PyTreeDef's __ne__.
  if tree_t != tree_0:  # type: ignore[operator]
    raise ValueError(f"params_t and params_0 must have the same structure, got {tree_t} and "
                     f"{tree_0}")
  layer_of = lambda path: path[:-1] if len(path) > 1 else path  # noqa: E731
  squared: dict[tuple, jax.Array] = {}  # a layer's path -> its squared norm at init
  for path, w_0 in flat_0:
    squared[layer_of(path)] = squared.get(layer_of(path), 0.0) + jnp.sum(jnp.square(w_0))
  movement = {}
  for (path, w_t), (_, w_0) in zip(flat_t, flat_0):
    layer_norm = jnp.sqrt(squared[layer_of(path)])
    scale = jnp.where(layer_norm > 0, layer_norm, 1.0)
    movement[jax.tree_util.keystr(path, simple=True, separator="/")] = (
        jnp.linalg.norm(w_t - w_0) / scale)
  return movement
