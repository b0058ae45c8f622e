"""Property-based robustness of every public loss and weighting (hypothesis).

1. Finite value and gradient for every finite input — zero vectors, duplicate rows, entries
   from 1e-30 to 3e38 for the losses that normalise their inputs (moderate magnitudes for
   CURL and Barlow Twins, which use raw features: their scores are products of entries and
   overflow float32 beyond ~1e19) — at every temperature from 0.01 to 10.
2. Bad arguments raise ValueError naming the argument.

Shapes are fixed so that eager execution reuses its compiled primitives across examples;
`max_examples` is modest and `derandomize=True` makes CI runs reproducible.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import embeddings

import jax
import jax.numpy as jnp

from contrax import weights
from contrax.losses import alpha_cl, barlow, curl, infonce, ntxent, supervised_infonce
from oracles import on_views

B, D, Q = 3, 4, 2
SETTINGS = settings(max_examples=8, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
temperatures = st.floats(0.01, 10.0)


def two_views(z):
  return jnp.asarray(z[:B]), jnp.asarray(z[B:2 * B])


def assert_finite_value_and_grad(loss_fn, *args):
  value, grads = jax.value_and_grad(loss_fn, argnums=tuple(range(len(args))))(*args)
  assert np.isfinite(float(value)), float(value)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g))), g


def assert_finite_weights(weight_fn, z1, z2, check_rows=True):
  w = np.asarray(weight_fn(z1, z2))
  assert np.all(np.isfinite(w)) and np.all(w >= 0)
  if check_rows:
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
  probe = jnp.asarray(np.random.default_rng(0).normal(size=w.shape), jnp.float32)
  assert_finite_value_and_grad(lambda a, b: jnp.sum(weight_fn(a, b) * probe), z1, z2)


@SETTINGS
@given(z=embeddings(2 * B, D), queue=embeddings(Q, D), t=temperatures, tau=st.floats(0.0, 0.99),
       beta=st.floats(0.0, 5.0), labels=st.lists(st.integers(0, 2), min_size=B, max_size=B))
def test_infonce_family_is_finite(z, queue, t, tau, beta, labels):
  z1, z2 = two_views(z)
  assert_finite_value_and_grad(lambda a, b: ntxent(a, b, temperature=t), z1, z2)
  assert_finite_value_and_grad(lambda a, b: infonce(a, b, temperature=t, tau_plus=tau), z1, z2)
  assert_finite_value_and_grad(
      lambda a, b: infonce(a, b, temperature=t, tau_plus=tau, decoupled=True), z1, z2)
  assert_finite_value_and_grad(
      lambda a, b: infonce(a, b, temperature=t, tau_plus=tau, queue=jnp.asarray(queue)), z1, z2)
  assert_finite_value_and_grad(
      lambda a, b: infonce(a, b, temperature=t, tau_plus=tau,
                           weights=on_views(weights.hcl)(a, b, beta=beta, temperature=t)), z1, z2)
  assert_finite_value_and_grad(
      lambda a, b: supervised_infonce(a, b, jnp.asarray(labels), temperature=t), z1, z2)


@SETTINGS
@given(z=embeddings(2 * B, D), t=temperatures, beta=st.floats(0.0, 5.0), p=st.floats(0.5, 6.0),
       eps_alpha=st.floats(0.0, 1.0))
def test_weightings_are_finite(z, t, beta, p, eps_alpha):
  z1, z2 = two_views(z)
  assert_finite_weights(lambda a, b: on_views(weights.uniform)(a, b), z1, z2)
  assert_finite_weights(lambda a, b: on_views(weights.hcl)(a, b, beta=beta, temperature=t), z1, z2)
  assert_finite_weights(
      lambda a, b: on_views(weights.alpha_direct)(a, b, p=p, eps_alpha=eps_alpha, temperature=t),
      z1, z2, check_rows=eps_alpha == 0)
  assert_finite_weights(lambda a, b: on_views(weights.sparsemax)(a, b, temperature=t), z1, z2)
  assert_finite_weights(lambda a, b: on_views(weights.inverse_power)(a, b, power=p, offset=t),
                        z1, z2)
  assert_finite_weights(lambda a, b: alpha_cl.infonce_alpha(a, b, temperature=t, eps=eps_alpha),
                        z1, z2, check_rows=False)


@SETTINGS
@given(z=embeddings(2 * B, D), t=temperatures, eps=st.floats(0.0, 2.0), margin=st.floats(0.0, 2.0),
       p=st.floats(0.5, 6.0))
def test_alpha_cl_is_finite(z, t, eps, margin, p):
  z1, z2 = two_views(z)
  for fam in (alpha_cl.infonce_family(t, eps), alpha_cl.mine_family(),
              alpha_cl.triplet_family(margin), alpha_cl.lifted_family(margin)):
    assert_finite_value_and_grad(lambda a, b: alpha_cl.phi_psi_loss(a, b, fam), z1, z2)
    alpha = alpha_cl.alpha_from_phi_psi(z1, z2, fam)
    assert np.all(np.isfinite(np.asarray(alpha))) and np.all(np.asarray(alpha) >= 0)
    assert_finite_value_and_grad(lambda a, b: alpha_cl.alpha_surrogate(a, b, alpha), z1, z2)
  assert_finite_value_and_grad(
      lambda a, b: alpha_cl.alpha_cl_direct(a, b, p=p, temperature=t), z1, z2)


@SETTINGS
@given(z=embeddings(3 * B, D), base=st.floats(1.1, 10.0))
def test_paper_form_losses_are_finite(z, base):
  f1, f2, fn = (jnp.asarray(z[k * B:(k + 1) * B]) for k in range(3))
  assert_finite_value_and_grad(lambda a, b, c: barlow.paper_infonce_one_negative(a, b, c).loss,
                               f1, f2, fn)


@SETTINGS
@given(z=embeddings(2 * B + 2 * B * 2, D, max_exponent=3), base=st.floats(1.1, 10.0),
       lambda_=st.floats(0.0, 1.0), eps=st.sampled_from([0.0, 1e-5]),
       labels=st.lists(st.integers(0, 2), min_size=B, max_size=B))
def test_raw_feature_losses_are_finite(z, base, lambda_, eps, labels):
  fx, fp = jnp.asarray(z[:B]), jnp.asarray(z[B:2 * B])
  fn = jnp.asarray(z[2 * B:].reshape(B, 2, 2, D))
  labels = jnp.asarray(labels)
  for loss in ("logistic", "hinge"):
    assert_finite_value_and_grad(lambda a, b, c: curl.curl_loss(a, b, c, loss=loss, base=base),
                                 fx, fp, fn[:, :, 0])
    assert_finite_value_and_grad(lambda a, b, c: curl.curl_loss(a, b, c, loss=loss, base=base),
                                 fx, fn[:, 0], fn)
    assert_finite_value_and_grad(
        lambda f: curl.supervised_multiway_loss(f, labels, jnp.array([0, 1, 2]),
                                                curl.mean_classifier(f, labels, 3), loss=loss,
                                                base=base), fx)
  assert_finite_value_and_grad(lambda a, b: barlow.barlow_twins(a, b, lambda_=lambda_, eps=eps),
                               fx, fp)
  assert_finite_value_and_grad(lambda a, b: barlow.cross_correlation_loss(a, b, lambda_).loss,
                               fx, fp)
  assert_finite_value_and_grad(barlow.alignment, fx, fp)


Z = jnp.ones((4, 5))
W_NOT_STOCHASTIC = jnp.full((8, 8), 0.5)


@pytest.mark.parametrize("call,name", [
    (lambda: infonce(Z, jnp.ones((4, 6))), "z1"),
    (lambda: infonce(Z, jnp.ones((3, 5))), "z1"),
    (lambda: infonce(jnp.ones(5), jnp.ones(5)), "z1"),
    (lambda: infonce(Z, Z, temperature=0.0), "temperature"),
    (lambda: infonce(Z, Z, temperature=-0.5), "temperature"),
    (lambda: infonce(Z, Z, temperature=float("nan")), "temperature"),
    (lambda: infonce(Z, Z, tau_plus=1.0), "tau_plus"),
    (lambda: infonce(Z, Z, tau_plus=-0.1), "tau_plus"),
    (lambda: infonce(Z, Z, weights=W_NOT_STOCHASTIC), "weights"),
    (lambda: infonce(Z, Z, weights=jnp.full((8, 7), 1 / 6)), "weights"),
    (lambda: infonce(Z, Z, weights=-on_views(weights.uniform)(Z, Z)), "weights"),
    (lambda: infonce(Z, Z, queue=jnp.ones((3, 4))), "queue"),
    (lambda: ntxent(Z, Z, temperature=0.0), "temperature"),
    (lambda: supervised_infonce(Z, Z, jnp.arange(3)), "labels"),
    (lambda: supervised_infonce(Z, Z, jnp.zeros((4, 1), jnp.int32)), "labels"),
    (lambda: supervised_infonce(Z, Z, jnp.zeros(4)), "labels"),
    (lambda: supervised_infonce(Z, Z, jnp.arange(4), temperature=-1.0), "temperature"),
    (lambda: on_views(weights.hcl)(Z, Z, beta=-1.0, temperature=0.5), "beta"),
    (lambda: on_views(weights.hcl)(Z, Z, beta=1.0, temperature=0.0), "temperature"),
    (lambda: on_views(weights.alpha_direct)(Z, Z, temperature=0.0), "temperature"),
    (lambda: alpha_cl.alpha_surrogate(Z, Z, W_NOT_STOCHASTIC[:4]), "alpha"),
    (lambda: alpha_cl.infonce_family(temperature=0.0), "temperature"),
    (lambda: on_views(weights.hcl)(Z, jnp.ones((4, 4)), temperature=0.5), "z1"),
    (lambda: barlow.barlow_twins(Z, jnp.ones((4, 4))), "z1"),
    (lambda: curl.curl_loss(Z, Z, jnp.ones((4, 2, 3))), "fx_neg"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(call, name):
  with pytest.raises(ValueError, match=name):
    call()
