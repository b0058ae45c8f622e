"""The InfoNCE family (contrax.losses.infonce) against a float64 NumPy oracle.

The oracle below is written from the formulas (SimCLR, Chen et al. 2020; debiased, Chuang et
al. 2020; HCL, Robinson et al. 2021; queue negatives, He et al. 2020) with plain loops and direct
exponentials (no log-space tricks); its gradient is taken by central finite differences in
float64. The code under test runs in float32 and must agree to rtol 1e-5 in value and to a
norm-wise relative error of 1e-5 in gradient at every temperature, t = 0.05 included (the
observed errors are ~2e-7: the log-space computation loses nothing to the 1/t = 20 scale).
"""
from __future__ import annotations

import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp

from contrax import weights
from contrax.losses import alpha_cl, infonce, ntxent, supervised_infonce, tiled
from oracles import fd_grad, rel_err, on_views

TEMPERATURES = (0.05, 0.5, 2.0)
B, D = 4, 6


def normalize(z):
  return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def oracle_infonce(z1, z2, t, *, tau_plus=0.0, decoupled=False, queue=None, hcl_beta=None,
                   return_clamped=False):
  """Weighted InfoNCE in float64: loss = mean_i -log(pos_i / (pos_i + Ng_i))."""
  b = z1.shape[0]
  z = normalize(np.concatenate([z1, z2]).astype(np.float64))
  cols = z if queue is None else np.concatenate([z, normalize(queue.astype(np.float64))])
  s = z @ cols.T
  losses, clamped = [], []
  for i in range(2 * b):
    p = (i + b) % (2 * b)
    negs = [j for j in range(cols.shape[0]) if j not in (i, p)]
    n = len(negs)
    if hcl_beta is None:
      w = np.full(n, 1.0 / n)
    else:
      e = np.exp(hcl_beta * s[i, negs] / t)
      w = e / e.sum()
    pos = np.exp(s[i, p] / t)
    neg = n * np.sum(w * np.exp(s[i, negs] / t))
    ng = neg
    if tau_plus > 0:
      floor = n * np.exp(-1.0 / t)
      raw = (neg - tau_plus * n * pos) / (1.0 - tau_plus)
      clamped.append(raw < floor)
      ng = max(raw, floor)
    if decoupled:
      losses.append(-s[i, p] / t + np.log(ng))
    else:  # -log(pos / (pos + Ng)), written as log1p to keep tiny losses exact in float64
      losses.append(np.log1p(ng / pos))
  loss = float(np.mean(losses))
  return (loss, np.array(clamped)) if return_clamped else loss


def oracle_supervised(z1, z2, labels, t):
  """SupCon-style: l_i = -(1/|P(i)|) sum_{p in P(i)} [s_ip/t - log sum_{j != i} e^{s_ij/t}]."""
  z = normalize(np.concatenate([z1, z2]).astype(np.float64))
  lab = np.concatenate([labels, labels])
  s = z @ z.T / t
  out = []
  for i in range(z.shape[0]):
    others = [j for j in range(z.shape[0]) if j != i]
    log_den = np.log(np.sum(np.exp(s[i, others])))
    pos = [j for j in others if lab[j] == lab[i]]
    out.append(-np.mean([s[i, p] - log_den for p in pos]))
  return float(np.mean(out))


def value_and_grad(loss_fn):
  """Value and gradients with respect to both views, run eagerly: every test uses the same
  small shapes, so the per-primitive compilations are shared and the file stays fast."""
  return jax.value_and_grad(loss_fn, argnums=(0, 1))


def views(seed, b=B, d=D, scale=1.0):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(b, d)).astype(np.float32)
  z2 = (z1 + scale * rng.normal(size=(b, d))).astype(np.float32)
  return z1, z2


def check_against_oracle(loss_fn, oracle_fn, z1, z2):
  value, grads = value_and_grad(loss_fn)(jnp.asarray(z1), jnp.asarray(z2))
  np.testing.assert_allclose(float(value), oracle_fn(z1, z2), rtol=1e-5)
  want = fd_grad(oracle_fn, z1, z2)
  err = rel_err(grads, want)
  assert err < 1e-5, err


@pytest.mark.parametrize("t", TEMPERATURES)
def test_ntxent_matches_oracle(t):
  z1, z2 = views(0)
  check_against_oracle(lambda a, b: ntxent(a, b, temperature=t),
                       lambda a, b: oracle_infonce(a, b, t), z1, z2)


@pytest.mark.parametrize("t", TEMPERATURES)
def test_ntxent_matches_optax(t):
  z1, z2 = views(1)
  labels = jnp.concatenate([jnp.arange(B), jnp.arange(B)])
  ref = lambda a, b: optax.losses.ntxent(jnp.concatenate([a, b]), labels, temperature=t)
  ours = lambda a, b: ntxent(a, b, temperature=t)
  v1, g1 = value_and_grad(ours)(z1, z2)
  v2, g2 = value_and_grad(ref)(z1, z2)
  np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5)
  assert rel_err(g1, g2) < 1e-5


@pytest.mark.parametrize("t", TEMPERATURES)
def test_debiased_matches_oracle(t):
  z1, z2 = views(2)
  check_against_oracle(lambda a, b: infonce(a, b, temperature=t, tau_plus=0.1),
                       lambda a, b: oracle_infonce(a, b, t, tau_plus=0.1), z1, z2)


@pytest.mark.parametrize("t", TEMPERATURES)
def test_debiased_clamp_active(t):
  # Views nearly equal and a large prior: tau+ N pos exceeds neg for some anchors, so Ng is
  # clamped to N exp(-1/t) there (and not everywhere: the other anchors test the formula).
  rng = np.random.default_rng(3)
  z1 = rng.normal(size=(B, D)).astype(np.float32)
  z2 = z1 + 0.05 * rng.normal(size=(B, D)).astype(np.float32)
  z2[0] = -z1[0]  # one pair far apart: not clamped
  tau = 0.8
  _, clamped = oracle_infonce(z1, z2, t, tau_plus=tau, return_clamped=True)
  assert clamped.any() and not clamped.all()
  check_against_oracle(lambda a, b: infonce(a, b, temperature=t, tau_plus=tau),
                       lambda a, b: oracle_infonce(a, b, t, tau_plus=tau), z1, z2)


@pytest.mark.parametrize("t", TEMPERATURES)
def test_hcl_matches_oracle(t):
  z1, z2 = views(4, scale=2.0)
  beta, tau = 1.0, 0.1

  def loss(a, b):
    w = on_views(weights.hcl)(a, b, beta=beta, temperature=t)
    return infonce(a, b, temperature=t, tau_plus=tau, weights=w)

  check_against_oracle(loss, lambda a, b: oracle_infonce(a, b, t, tau_plus=tau, hcl_beta=beta),
                       z1, z2)


@pytest.mark.parametrize("t", TEMPERATURES)
def test_decoupled_matches_oracle(t):
  z1, z2 = views(5)
  check_against_oracle(lambda a, b: infonce(a, b, temperature=t, decoupled=True),
                       lambda a, b: oracle_infonce(a, b, t, decoupled=True), z1, z2)


@pytest.mark.parametrize("t", TEMPERATURES)
def test_supervised_matches_oracle(t):
  z1, z2 = views(6)
  labels = np.array([0, 1, 0, 0])  # repeated labels: several positives per anchor
  check_against_oracle(
      lambda a, b: supervised_infonce(a, b, jnp.asarray(labels), temperature=t),
      lambda a, b: oracle_supervised(a, b, labels, t), z1, z2)


@pytest.mark.parametrize("t", TEMPERATURES)
def test_queue_matches_oracle_and_gets_no_gradient(t):
  z1, z2 = views(7)
  queue = np.random.default_rng(8).normal(size=(5, D)).astype(np.float32)
  check_against_oracle(lambda a, b: infonce(a, b, temperature=t, queue=jnp.asarray(queue)),
                       lambda a, b: oracle_infonce(a, b, t, queue=queue), z1, z2)
  g_queue = jax.grad(lambda q: infonce(z1, z2, temperature=t, queue=q))(jnp.asarray(queue))
  assert np.all(np.asarray(g_queue) == 0.0)


@pytest.mark.parametrize("t", TEMPERATURES)
def test_identity_hcl_beta0_is_debiased_is_ntxent(t):
  """(c): HCL with beta = 0 equals debiased CL, which with tau+ = 0 equals NT-Xent."""
  z1, z2 = (jnp.asarray(v) for v in views(9))
  hcl0 = lambda a, b, tau: infonce(a, b, temperature=t, tau_plus=tau,
                                   weights=on_views(weights.hcl)(a, b, beta=0.0, temperature=t))
  dcl = lambda a, b, tau: infonce(a, b, temperature=t, tau_plus=tau)
  for tau in (0.1, 0.0):
    v1, g1 = value_and_grad(lambda a, b: hcl0(a, b, tau))(z1, z2)
    v2, g2 = value_and_grad(lambda a, b: dcl(a, b, tau))(z1, z2)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5)
    assert rel_err(g1, g2) < 1e-5
  v3, g3 = value_and_grad(lambda a, b: ntxent(a, b, temperature=t))(z1, z2)
  np.testing.assert_allclose(float(v2), float(v3), rtol=1e-6)
  assert rel_err(g2, g3) < 1e-6


@pytest.mark.parametrize("t", TEMPERATURES)
def test_identity_supervised_one_positive_is_ntxent(t):
  """(d): with distinct labels (one positive per anchor) the supervised loss is NT-Xent."""
  z1, z2 = (jnp.asarray(v) for v in views(10))
  labels = jnp.array([3, 0, 2, 1])
  sup = lambda a, b: supervised_infonce(a, b, labels, temperature=t)
  nt = lambda a, b: ntxent(a, b, temperature=t)
  v1, g1 = value_and_grad(sup)(z1, z2)
  v2, g2 = value_and_grad(nt)(z1, z2)
  np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5)
  assert rel_err(g1, g2) < 1e-5


def test_sharded_equals_single_device():
  """Local rows × global columns under shard_map equal the loss on the global batch."""
  n_dev = min(2, jax.device_count())
  if n_dev < 2:
    pytest.skip("needs several (virtual) devices")
  mesh = jax.make_mesh((n_dev,), ("data",))
  spec = jax.sharding.PartitionSpec("data")
  z1, z2 = (jnp.asarray(v) for v in views(11))

  def make(axis_name):
    def loss(a, b):
      w = on_views(weights.hcl)(a, b, beta=0.5, temperature=0.5, axis_name=axis_name)
      return infonce(a, b, temperature=0.5, tau_plus=0.1, weights=w, axis_name=axis_name)
    return loss

  sharded = jax.shard_map(make("data"), mesh=mesh, in_specs=(spec, spec),
                          out_specs=jax.sharding.PartitionSpec())
  sharding = jax.sharding.NamedSharding(mesh, spec)
  v1, g1 = jax.jit(value_and_grad(sharded))(jax.device_put(z1, sharding),
                                            jax.device_put(z2, sharding))
  v2, g2 = value_and_grad(make(None))(z1, z2)
  np.testing.assert_allclose(float(v1), float(v2), rtol=1e-6)
  assert rel_err(g1, g2) < 1e-5


@pytest.mark.parametrize("t", [0.01, 0.05, 2.0])  # 0.01: the per-row-max branch
@pytest.mark.parametrize("decoupled", [False, True])
def test_single_device_fast_path_matches_oracle_and_generic_path(t, decoupled):
  """Uniform weights on one device use a hand-derived gradient (one matmul); it must match
  the oracle, the autodiff path (forced here by passing the uniform weights explicitly) and
  forward-mode differentiation."""
  z1, z2 = views(13, scale=0.3)
  fast = lambda a, b: infonce(a, b, temperature=t, decoupled=decoupled)
  check_against_oracle(fast, lambda a, b: oracle_infonce(a, b, t, decoupled=decoupled), z1, z2)
  generic = lambda a, b: infonce(a, b, temperature=t, decoupled=decoupled,
                                 weights=on_views(weights.uniform)(a, b))
  v1, g1 = value_and_grad(fast)(z1, z2)
  v2, g2 = value_and_grad(generic)(z1, z2)
  np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5)
  assert rel_err(g1, g2) < 1e-5
  d1, d2 = (jnp.asarray(v) for v in views(14))
  _, forward = jax.jvp(fast, (jnp.asarray(z1), jnp.asarray(z2)), (d1, d2))
  np.testing.assert_allclose(float(forward), float(jnp.sum(g1[0] * d1) + jnp.sum(g1[1] * d2)),
                             rtol=1e-4, atol=1e-6)


TEMPERATURE_LOSSES = {
    "ntxent": (lambda a, b, t: infonce(a, b, temperature=t), {}),
    "debiased": (lambda a, b, t: infonce(a, b, temperature=t, tau_plus=0.1), {"tau_plus": 0.1}),
    "hcl": (lambda a, b, t: infonce(a, b, temperature=t, tau_plus=0.1, weights=on_views(
        weights.hcl)(a, b, beta=1.0, temperature=t)), {"tau_plus": 0.1, "hcl_beta": 1.0}),
    "tiled_hcl": (lambda a, b, t: tiled.tiled_infonce(a, b, temperature=t, tau_plus=0.1,
                                                      beta=1.0, tile_size=3),
                  {"tau_plus": 0.1, "hcl_beta": 1.0}),
}


@pytest.mark.parametrize("name", sorted(TEMPERATURE_LOSSES))
def test_gradient_with_respect_to_a_traced_temperature(name):
  """Issue 19.5: a learnable temperature; d loss / d t against central differences of the
  float64 oracle."""
  loss, oracle_kwargs = TEMPERATURE_LOSSES[name]
  z1, z2 = views(21)
  t, h = 0.5, 1e-6
  value, grad_t = jax.value_and_grad(lambda u: loss(z1, z2, u))(jnp.float32(t))
  want = (oracle_infonce(z1, z2, t + h, **oracle_kwargs)
          - oracle_infonce(z1, z2, t - h, **oracle_kwargs)) / (2 * h)
  np.testing.assert_allclose(float(value), oracle_infonce(z1, z2, t, **oracle_kwargs), rtol=1e-5)
  np.testing.assert_allclose(float(grad_t), want, rtol=1e-4)


def test_temperature_may_be_an_array_or_passed_into_a_jitted_step():
  z1, z2 = views(22)
  want = float(infonce(z1, z2, temperature=0.5))
  np.testing.assert_allclose(float(infonce(z1, z2, temperature=jnp.array(0.5))), want, rtol=1e-6)
  np.testing.assert_allclose(float(jax.jit(lambda t: infonce(z1, z2, temperature=t))(0.5)), want,
                             rtol=1e-6)
  for weighting in (weights.hcl, weights.alpha_direct, weights.sparsemax):
    got = jax.jit(lambda t: on_views(weighting)(z1, z2, temperature=t))(0.5)
    np.testing.assert_allclose(np.asarray(got), np.asarray(on_views(weighting)(
        z1, z2, temperature=0.5)), rtol=1e-6, atol=1e-7)
  jax.jit(lambda t: alpha_cl.alpha_cl_direct(z1, z2, temperature=t))(0.5)
  with pytest.raises(ValueError, match="temperature"):
    infonce(z1, z2, temperature=jnp.array(-0.5))
  with pytest.raises(TypeError, match="temperature"):
    infonce(z1, z2, temperature=jnp.ones(2))


@pytest.mark.parametrize("call", [
    lambda z1, z2: infonce(z1, z2),
    lambda z1, z2: infonce(z1, z2, implementation="tiled"),
    lambda z1, z2: supervised_infonce(z1, z2, np.arange(z1.shape[0])),
    lambda z1, z2: alpha_cl.alpha_cl_direct(z1, z2),
    lambda z1, z2: alpha_cl.phi_psi_loss(z1, z2, alpha_cl.mine_family()),
])
def test_nan_or_inf_inputs_are_errors_naming_the_row(call):
  """Issue 19.7: concrete NaN/inf inputs are refused (they gave NaN silently)."""
  z1, z2 = views(23)
  bad = np.array(z1)
  bad[3, 2] = np.nan
  with pytest.raises(ValueError, match="z1 contains NaN or inf at row 3"):
    call(bad, z2)
  bad = np.array(z2)
  bad[1, 0] = -np.inf
  with pytest.raises(ValueError, match="z2 contains NaN or inf at row 1"):
    call(z1, bad)
  assert np.isnan(float(jax.jit(call)(np.full_like(z1, np.nan), z2)))  # traced: not checked
