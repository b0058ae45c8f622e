"""Training objectives from a nested config: a loss, a negative weighting, their knobs.

A config holds two sub-dicts (`default_config`):

    loss:      name in LOSS_NAMES; temperature; tau_plus; decoupled; lambda_ (barlow_twins);
               vicreg.{sim_coeff, std_coeff, cov_coeff, gamma, eps} (vicreg)
    weighting: name in `contrax.weights.REGISTRY`; stop_gradient; and one sub-dict per
               weighting with its keyword hyper-parameters, e.g. weighting.ot.epsilon

The weighting sub-dicts are read from the functions' signatures (`inspect.signature`), so a
new weighting is one function in `contrax.weights` plus its `REGISTRY` entry, and every knob is
reachable from the command line (`--config.weighting.ot.epsilon=0.3`). A weighting's
`temperature` is the loss's (`loss.temperature`), not a separate field.

`make(config)` validates every field eagerly (errors name the field) and returns
`loss_fn(z1, z2, *, axis_name=None) -> scalar`, which builds the batch geometry once
(`contrax.pairs.build`), weighs the negatives, optionally stops their gradient, and applies
the loss. `PRESETS` name the classic methods (the trainer's former flat loss names).
"""
from __future__ import annotations

import copy
import inspect
from typing import Callable

import jax
import ml_collections

from contrax import _checks
from contrax import pairs as pairs_lib
from contrax import weights
from contrax.losses.alpha_cl import alpha_surrogate_pairs
from contrax.losses.barlow import barlow_twins
from contrax.losses.infonce import infonce_pairs
from contrax.losses.vicreg import vicreg_loss

__all__ = [
    "LOSS_NAMES", "LossFn", "hyperparameters", "default_config", "PRESETS", "apply_preset",
    "describe", "make", "negative_weights",
]

LOSS_NAMES = ("infonce", "alpha_cl", "barlow_twins", "vicreg")
LossFn = Callable[..., jax.Array]  # (z1, z2, *, axis_name=None) -> scalar
# A weighting's `temperature` comes from the loss.
_SHARED = ("temperature",)


def hyperparameters(name: str) -> dict:
  """The keyword hyper-parameters of weighting `name` and their defaults (from its signature),
  without the ones shared with the loss."""
  signature = inspect.signature(weights.REGISTRY[name])
  return {k: p.default for k, p in signature.parameters.items()
          if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in _SHARED}


def default_config() -> ml_collections.ConfigDict:
  """InfoNCE with uniform weights (SimCLR's NT-Xent), t = 0.5; every weighting's knobs."""
  c = ml_collections.ConfigDict()
  c.loss = ml_collections.ConfigDict()
  c.loss.name = "infonce"
  c.loss.temperature = 0.5
  c.loss.tau_plus = 0.0      # debiasing prior (Chuang et al. 2020), infonce
  c.loss.decoupled = False   # no positive in the denominator (Yeh et al. 2022), infonce
  c.loss.lambda_ = 5e-3      # off-diagonal weight, barlow_twins
  # VICReg's weights and hinge (Bardes et al. 2022: lambda = mu = 25, nu = 1, gamma = 1)
  c.loss.vicreg = ml_collections.ConfigDict(
      {"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0, "gamma": 1.0, "eps": 1e-4})
  c.weighting = ml_collections.ConfigDict()
  c.weighting.name = "uniform"
  c.weighting.stop_gradient = False  # treat the weights as constants (jax.lax.stop_gradient)
  for name in weights.REGISTRY:
    hyper = hyperparameters(name)
    if hyper:
      c.weighting[name] = ml_collections.ConfigDict(hyper)
  return c


PRESETS: dict[str, dict] = {
    "ntxent": {},
    "debiased": {"loss.tau_plus": 0.1},
    "decoupled": {"loss.decoupled": True},
    # The official HCL code differentiates through its reweighting.
    "hcl": {"loss.tau_plus": 0.1, "weighting.name": "hcl"},
    "hcl_detached": {"loss.tau_plus": 0.1, "weighting.name": "hcl",
                     "weighting.stop_gradient": True},
    # The official HCL-OT code treats the coupling as a constant.
    "hcl_ot": {"loss.tau_plus": 0.1, "weighting.name": "ot", "weighting.stop_gradient": True},
    "quadratic_ot": {"loss.tau_plus": 0.1, "weighting.name": "quadratic_ot",
                     "weighting.stop_gradient": True},
    # α-CL: the min player's α on detached embeddings (Tian 2022 and its official code).
    "alpha_direct": {"loss.name": "alpha_cl", "weighting.name": "alpha_direct",
                     "weighting.stop_gradient": True},
    "alpha_inverse_power": {"loss.name": "alpha_cl", "weighting.name": "inverse_power",
                            "weighting.stop_gradient": True},
    "alpha_sparsemax": {"loss.name": "alpha_cl", "weighting.name": "sparsemax",
                        "weighting.stop_gradient": True},
    # The entropy-regularised min player softmax_j(-d²_ij/t) is hcl(beta=1).
    "alpha_entropy": {"loss.name": "alpha_cl", "weighting.name": "hcl", "weighting.hcl.beta": 1.0,
                      "weighting.stop_gradient": True},
    "barlow": {"loss.name": "barlow_twins"},
    "vicreg": {"loss.name": "vicreg"},
}
# Fields a preset owns: reset to their defaults before its overrides apply.
_PRESET_FIELDS = ("loss.name", "loss.tau_plus", "loss.decoupled", "weighting.name",
                  "weighting.stop_gradient")


def _get(config, dotted: str):
  for key in dotted.split("."):
    config = config[key]
  return config


def _set(config, dotted: str, value) -> None:
  *parents, last = dotted.split(".")
  for key in parents:
    config = config[key]
  config[last] = value


def apply_preset(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A copy of `config` (holding `loss` and `weighting`) set to the method `name` of PRESETS.

  The preset's objective fields (loss name, tau_plus, decoupled, weighting name,
  stop_gradient) are first reset to `default_config()`'s; temperature and the weightings'
  hyper-parameters keep their values unless the preset sets them.
  """
  _checks.choice("preset", name, PRESETS)
  config = copy.deepcopy(config)
  defaults = default_config()
  for field in _PRESET_FIELDS:
    _set(config, field, _get(defaults, field))
  for field, value in PRESETS[name].items():
    _set(config, field, value)
  return config


def describe(config: ml_collections.ConfigDict) -> str:
  """A short name of the objective for summaries and progress bars, e.g. "infonce+hcl"."""
  text = str(config.loss.name)
  if config.weighting.name != "uniform":
    text += f"+{config.weighting.name}"
    if config.weighting.stop_gradient:
      text += "(detached)"
  return text


def _weighting(config) -> tuple[str, Callable, dict]:
  """(name, function, keyword arguments) of the configured weighting, validated eagerly."""
  wcfg = config.weighting
  name = _checks.choice("weighting.name", wcfg.name, weights.REGISTRY)
  if not isinstance(wcfg.stop_gradient, bool):
    raise TypeError(f"weighting.stop_gradient must be a bool, got {wcfg.stop_gradient!r}")
  fn = weights.REGISTRY[name]
  hyper = hyperparameters(name)
  given = wcfg[name] if hyper else {}
  unknown = sorted(set(given) - set(hyper))
  if unknown:
    raise ValueError(f"unknown fields weighting.{name}.{unknown[0]}; valid: {sorted(hyper)}")
  kwargs = {k: given[k] for k in hyper}
  if "temperature" in inspect.signature(fn).parameters:
    kwargs["temperature"] = config.loss.temperature
  try:  # the weighting's eager hyper-parameter checks, without tracing anything
    fn(_HyperparameterProbe(), **kwargs)
  except _ProbeReached:
    pass
  except (ValueError, TypeError) as e:
    raise type(e)(f"weighting.{name}: {e}") from e
  return name, fn, kwargs


class _ProbeReached(Exception):
  """A weighting read the batch: its hyper-parameter checks (which come first) have passed."""


class _HyperparameterProbe:
  """Stands in for a `Pairs` while a weighting checks its hyper-parameters: every weighting
  validates its keyword arguments before it reads the batch, so reading any array field ends
  the check. Validating this way runs no JAX operation, so a bad config is reported before
  anything is traced or compiled (the trainer's promise); `axis_name` is the single-device one."""
  axis_name = None

  def __getattr__(self, name):
    raise _ProbeReached(name)


def make(config: ml_collections.ConfigDict) -> LossFn:
  """`loss_fn(z1, z2, *, axis_name=None) -> scalar` of `config.loss` and `config.weighting`.

  Every field is validated here, before anything is compiled; errors name the field.
  """
  lcfg = config.loss
  loss_name = _checks.choice("loss.name", lcfg.name, LOSS_NAMES)
  if loss_name in ("barlow_twins", "vicreg") and config.weighting.name != "uniform":
    raise ValueError(f"loss.name={loss_name!r} has no negatives to weigh: weighting.name must "
                     f"be 'uniform', got {config.weighting.name!r}")
  if loss_name == "vicreg":
    hyper = {k: _checks.non_negative(f"loss.vicreg.{k}", lcfg.vicreg[k])
             for k in ("sim_coeff", "std_coeff", "cov_coeff")}
    hyper["gamma"] = _checks.positive("loss.vicreg.gamma", lcfg.vicreg.gamma)
    hyper["eps"] = _checks.positive("loss.vicreg.eps", lcfg.vicreg.eps)

    def vicreg(z1, z2, *, axis_name=None):
      return vicreg_loss(z1, z2, axis_name=axis_name, **hyper)
    return vicreg
  if loss_name == "barlow_twins":
    lambda_ = _checks.non_negative("loss.lambda_", lcfg.lambda_)

    def barlow_loss(z1, z2, *, axis_name=None):
      return barlow_twins(z1, z2, lambda_=lambda_, axis_name=axis_name)
    return barlow_loss
  t = _checks.positive("loss.temperature", lcfg.temperature)
  tau_plus = _checks.in_range("loss.tau_plus", lcfg.tau_plus, 0.0, 1.0)
  if not isinstance(lcfg.decoupled, bool):
    raise TypeError(f"loss.decoupled must be a bool, got {lcfg.decoupled!r}")
  if loss_name == "alpha_cl" and (tau_plus != 0.0 or lcfg.decoupled):
    raise ValueError("loss.tau_plus and loss.decoupled apply to loss.name='infonce' only, got "
                     f"tau_plus={tau_plus}, decoupled={lcfg.decoupled} with 'alpha_cl'")
  weighting_name, weigh, kwargs = _weighting(config)
  stop = config.weighting.stop_gradient

  def loss_fn(z1, z2, *, axis_name=None):
    pairs = pairs_lib.build(z1, z2, axis_name=axis_name)
    if weighting_name == "uniform" and loss_name == "infonce":
      w = None  # uniform weights: the plain log-sum-exp (and the single-device fast path)
    else:
      w = weigh(pairs, **kwargs)
      if stop:
        w = jax.lax.stop_gradient(w)
    if loss_name == "infonce":
      return infonce_pairs(pairs, temperature=t, weights=w, tau_plus=tau_plus,
                           decoupled=lcfg.decoupled)
    return alpha_surrogate_pairs(pairs, w)
  return loss_fn


def negative_weights(config: ml_collections.ConfigDict, pairs: pairs_lib.Pairs) -> jax.Array:
  """The `[2b, 2B]` negative weights that `make(config)`'s loss puts on the batch `pairs`
  (uniform `1/N` for the plain losses), for diagnostics such as the hardness of a method."""
  _, weigh, kwargs = _weighting(config)
  return weigh(pairs, **kwargs)
