"""α-CL (contrax.losses.alpha_cl) against float64 NumPy oracles written from Tian 2022, and the
identities (a), (b), (f)."""
from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from contrax import weights
from contrax.losses import alpha_cl, infonce, ntxent
from oracles import fd_grad, rel_err, on_views

TEMPERATURES = (0.05, 0.5, 2.0)
B, D = 4, 6
N = 2 * B - 2


def views(seed, noise=1.0):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(B, D)).astype(np.float32)
  return z1, (z1 + noise * rng.normal(size=(B, D))).astype(np.float32)


def negative_mask():
  i = np.arange(2 * B)
  mask = np.ones((2 * B, 2 * B), bool)
  mask[i, i] = False
  mask[i, (i + B) % (2 * B)] = False
  return mask


def oracle_distances(z1, z2):
  """d²_ij = ½‖z_i - z_j‖² of unit rows, and d²_i to the positive (float64)."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  d2 = 0.5 * np.sum((z[:, None, :] - z[None, :, :]) ** 2, axis=-1)
  d2_pos = d2[np.arange(2 * B), (np.arange(2 * B) + B) % (2 * B)]
  return d2, d2_pos


# (φ, ψ, φ', ψ') (Tian 2022), float64.
def oracle_family(name, t=0.5, eps=1.0, margin=0.5):
  if name == "infonce":
    return (lambda x: t * np.log(eps + x), lambda x: np.exp(x / t),
            lambda x: t / (eps + x), lambda x: np.exp(x / t) / t)
  if name == "mine":
    return np.log, np.exp, lambda x: 1.0 / x, np.exp
  if name == "triplet":
    return (lambda x: x, lambda x: np.maximum(x + margin, 0.0),
            lambda x: np.ones_like(x), lambda x: (x + margin > 0).astype(float))
  if name == "lifted":
    return (lambda x: np.maximum(np.log(x), 0.0) ** 2, lambda x: np.exp(x + margin),
            lambda x: 2 * np.maximum(np.log(x), 0.0) / x, lambda x: np.exp(x + margin))
  raise ValueError(name)


def family(name, t=0.5, eps=1.0, margin=0.5):
  return {"infonce": lambda: alpha_cl.infonce_family(t, eps), "mine": alpha_cl.mine_family,
          "triplet": lambda: alpha_cl.triplet_family(margin),
          "lifted": lambda: alpha_cl.lifted_family(margin)}[name]()


def oracle_loss(z1, z2, phi, psi):
  d2, d2_pos = oracle_distances(z1, z2)
  mask = negative_mask()
  xi = np.array([np.sum(psi(d2_pos[i] - d2[i, mask[i]])) for i in range(2 * B)])
  return float(np.mean(phi(xi)))


def oracle_alpha(z1, z2, phi, psi, dphi, dpsi):
  d2, d2_pos = oracle_distances(z1, z2)
  mask = negative_mask()
  x = d2_pos[:, None] - d2
  xi = np.sum(np.where(mask, psi(x), 0.0), axis=1, keepdims=True)
  return np.where(mask, dphi(xi) * dpsi(x), 0.0)


def grads(fn, z1, z2):
  return jax.grad(fn, argnums=(0, 1))(jnp.asarray(z1), jnp.asarray(z2))


CASES = [("infonce", t, eps) for t in TEMPERATURES for eps in (1.0, 0.0)] + [
    ("mine", None, None), ("triplet", None, None), ("lifted", None, None)]


@pytest.mark.parametrize("name,t,eps", CASES)
def test_phi_psi_loss_and_alpha_match_oracle(name, t, eps):
  z1, z2 = views(0)
  kw = dict(t=t, eps=eps) if name == "infonce" else {}
  phi, psi, dphi, dpsi = oracle_family(name, **kw)
  fam = family(name, **kw)
  oracle = lambda a, b: oracle_loss(a, b, phi, psi)
  value, g = jax.value_and_grad(lambda a, b: alpha_cl.phi_psi_loss(a, b, fam), argnums=(0, 1))(
      z1, z2)
  np.testing.assert_allclose(float(value), oracle(z1, z2), rtol=1e-5)
  tol = 1e-5
  assert rel_err(g, fd_grad(oracle, z1, z2)) < tol
  want_alpha = oracle_alpha(z1, z2, phi, psi, dphi, dpsi)
  got_alpha = np.asarray(alpha_cl.alpha_from_phi_psi(z1, z2, fam))
  np.testing.assert_allclose(got_alpha, want_alpha, rtol=tol, atol=1e-6 * np.abs(want_alpha).max())
  # The α-CL identity for every member: ∇ L_{φ,ψ} = ∇ surrogate(sg(α)).
  g_surrogate = grads(lambda a, b: alpha_cl.alpha_surrogate(a, b, jnp.asarray(got_alpha)), z1, z2)
  assert rel_err(g_surrogate, g) < 1e-5


def test_generic_callables_equal_preset():
  """The family evaluated from plain φ, ψ callables (no log form) equals the preset."""
  z1, z2 = views(1)
  t = 0.5
  phi, psi = (lambda x: t * jnp.log(1.0 + x)), (lambda x: jnp.exp(x / t))
  np.testing.assert_allclose(float(alpha_cl.phi_psi_loss(z1, z2, phi, psi)),
                             float(alpha_cl.phi_psi_loss(z1, z2, alpha_cl.infonce_family(t))),
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(alpha_cl.alpha_from_phi_psi(z1, z2, phi, psi)),
                             np.asarray(alpha_cl.infonce_alpha(z1, z2, temperature=t)),
                             rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("t", TEMPERATURES)
@pytest.mark.parametrize("eps", [1.0, 0.0, 0.3])
def test_infonce_alpha_closed_form(t, eps):
  z1, z2 = views(2)
  d2, d2_pos = oracle_distances(z1, z2)
  mask = negative_mask()
  e = np.where(mask, np.exp(-d2 / t), 0.0)
  want = e / (eps * np.exp(-d2_pos / t)[:, None] + e.sum(1, keepdims=True))
  got = np.asarray(alpha_cl.infonce_alpha(z1, z2, temperature=t, eps=eps))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("t", TEMPERATURES)
def test_identity_a_ntxent_gradient_is_surrogate_gradient(t):
  """(a): ∇(t · ntxent) = ∇ mean_i Σ_j sg(α_ij)(d²_i - d²_ij), α InfoNCE's with ε = 1."""
  z1, z2 = views(3)
  alpha = alpha_cl.infonce_alpha(z1, z2, temperature=t, eps=1.0)
  g_nt = grads(lambda a, b: t * ntxent(a, b, temperature=t), z1, z2)
  g_s = grads(lambda a, b: alpha_cl.alpha_surrogate(a, b, alpha), z1, z2)
  assert rel_err(g_s, g_nt) <= 1e-5
  np.testing.assert_allclose(float(alpha_cl.phi_psi_loss(z1, z2, alpha_cl.infonce_family(t))),
                             t * float(ntxent(z1, z2, temperature=t)), rtol=1e-5)


@pytest.mark.parametrize("t", TEMPERATURES)
def test_identity_b_direct_p2_is_decoupled_infonce(t):
  """(b): α-CL-direct with p = 2, ε_α = 0 has the gradient of t × InfoNCE with ε = 0."""
  z1, z2 = views(4)
  g_direct = grads(lambda a, b: alpha_cl.alpha_cl_direct(a, b, p=2.0, eps_alpha=0.0,
                                                         temperature=t), z1, z2)
  g_dec = grads(lambda a, b: t * infonce(a, b, temperature=t, decoupled=True), z1, z2)
  assert rel_err(g_direct, g_dec) <= 1e-5


def test_alpha_cl_direct_value_matches_oracle():
  z1, z2 = views(5)
  d2, d2_pos = oracle_distances(z1, z2)
  mask = negative_mask()
  p, t, eps_alpha = 4.0, 0.5, 0.1
  e = np.where(mask, np.exp(-d2 ** (p / 2) / t), 0.0)
  alpha = e / (e.sum(1, keepdims=True) + eps_alpha * N)
  want = np.mean(np.sum(np.where(mask, alpha * (d2_pos[:, None] - d2), 0.0), axis=1))
  got = float(alpha_cl.alpha_cl_direct(z1, z2, p=p, eps_alpha=eps_alpha, temperature=t))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_surrogate_differentiates_alpha_as_given():
  """No hidden stop-gradient: d surrogate / d α_ij = (d²_i - d²_ij) / 2B on the negatives."""
  z1, z2 = views(6)
  alpha = on_views(weights.hcl)(z1, z2, temperature=0.5)
  g = jax.grad(lambda a: alpha_cl.alpha_surrogate(z1, z2, a))(alpha)
  d2, d2_pos = oracle_distances(z1, z2)
  want = np.where(negative_mask(), d2_pos[:, None] - d2, 0.0) / (2 * B)
  np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("t", TEMPERATURES)
def test_entropy_player_hcl_beta_1_and_inverse_power_match_oracle(t):
  z1, z2 = views(7)
  d2, _ = oracle_distances(z1, z2)
  mask = negative_mask()
  e = np.where(mask, np.exp(-d2 / t), 0.0)
  np.testing.assert_allclose(np.asarray(on_views(weights.hcl)(z1, z2, temperature=t)),
                             e / e.sum(1, keepdims=True), rtol=2e-5, atol=1e-7)
  k, offset = 2.0, t  # reuse t as the offset t'
  w = np.where(mask, (d2 + offset) ** (-k), 0.0)
  inverse_power = on_views(weights.inverse_power)
  np.testing.assert_allclose(np.asarray(inverse_power(z1, z2, power=k, offset=offset)),
                             w / w.sum(1, keepdims=True), rtol=2e-5, atol=1e-7)


def oracle_sparsemax(scores, mask):
  """Projection onto the simplex by bisection on τ (Σ_j [s_j - τ]₊ = 1), float64."""
  out = np.zeros_like(scores, dtype=np.float64)
  for i in range(scores.shape[0]):
    s = scores[i, mask[i]].astype(np.float64)
    lo, hi = s.max() - 1.0, s.max()
    for _ in range(200):
      mid = 0.5 * (lo + hi)
      lo, hi = (mid, hi) if np.maximum(s - mid, 0).sum() > 1.0 else (lo, mid)
    out[i, mask[i]] = np.maximum(s - 0.5 * (lo + hi), 0.0)
  return out


@pytest.mark.parametrize("t", [0.05, 0.5, 2.0, 10.0])
def test_identity_f_sparsemax(t):
  """(f): rows non-negative, summing to 1, supported on the smallest distances."""
  z1, z2 = views(8)
  d2, _ = oracle_distances(z1, z2)
  mask = negative_mask()
  alpha = np.asarray(on_views(weights.sparsemax)(z1, z2, temperature=t), np.float64)
  assert np.all(alpha >= 0)
  np.testing.assert_allclose(alpha.sum(1), 1.0, rtol=0, atol=2e-6)
  assert np.all(alpha[~mask] == 0)
  for i in range(2 * B):
    kept = mask[i] & (alpha[i] > 0)
    dropped = mask[i] & (alpha[i] == 0)
    if dropped.any():
      assert d2[i, kept].max() <= d2[i, dropped].min() + 1e-6
  np.testing.assert_allclose(alpha, oracle_sparsemax(-d2 / t, mask), atol=2e-6)


def test_sparsemax_rows_handles_ties_and_a_single_entry():
  scores = jnp.array([[0.0, 0.0, 0.0, 0.0], [5.0, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
  mask = jnp.array([[True] * 4, [False, True, True, True], [False, False, True, False]])
  got = np.asarray(weights.sparsemax_rows(scores, mask))
  np.testing.assert_allclose(got, [[0.25] * 4, [0, 0, 1, 0], [0, 0, 1, 0]], atol=1e-7)


def test_sharded_surrogate_equals_single_device():
  """shard_map: α-CL-direct value and gradients equal the loss on the global batch."""
  if jax.device_count() < 2:
    pytest.skip("needs several (virtual) devices")
  mesh = jax.make_mesh((2,), ("data",))
  spec = jax.sharding.PartitionSpec("data")
  z1, z2 = (jnp.asarray(v) for v in views(9))
  loss = lambda ax: lambda a, b: alpha_cl.alpha_cl_direct(a, b, p=4.0, eps_alpha=0.1,
                                                          temperature=0.5, axis_name=ax)
  sharded = jax.shard_map(loss("data"), mesh=mesh, in_specs=(spec, spec),
                          out_specs=jax.sharding.PartitionSpec())
  put = lambda z: jax.device_put(z, jax.sharding.NamedSharding(mesh, spec))
  v1, g1 = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(put(z1), put(z2))
  v2, g2 = jax.value_and_grad(loss(None), argnums=(0, 1))(z1, z2)
  np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5)
  assert rel_err(g1, g2) < 1e-5


@pytest.mark.parametrize("call,name", [
    (lambda z: alpha_cl.alpha_surrogate(z, z, np.ones((3, 8))), "alpha"),
    (lambda z: alpha_cl.alpha_surrogate(z, z, -np.ones((8, 8))), "alpha"),
    (lambda z: alpha_cl.infonce_alpha(z, z, temperature=0.0), "temperature"),
    (lambda z: alpha_cl.infonce_alpha(z, z, eps=-1.0), "eps"),
    (lambda z: on_views(weights.sparsemax)(z, z, temperature=-1.0), "temperature"),
    (lambda z: on_views(weights.inverse_power)(z, z, power=0.0), "power"),
    (lambda z: on_views(weights.inverse_power)(z, z, offset=0.0), "offset"),
    (lambda z: alpha_cl.phi_psi_loss(z, z[:, :3], alpha_cl.mine_family()), "z1"),
    (lambda z: alpha_cl.phi_psi_loss(z, z, alpha_cl.mine_family(), jnp.exp), "psi"),
    (lambda z: alpha_cl.triplet_family(margin=-1.0), "margin"),
    (lambda z: alpha_cl.phi_psi_loss(z[:1], z[:1], alpha_cl.mine_family()), "negative"),
])
def test_bad_arguments_raise(call, name):
  with pytest.raises(ValueError, match=name):
    call(jnp.ones((4, 5)))
