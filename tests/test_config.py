"""The experiment CLI: flags are typed by the config's defaults."""
import ml_collections
import pytest

from contrax import config as config_lib


def base():
  c = ml_collections.ConfigDict()
  c.name = "x"
  c.steps = 10
  c.lr = 0.1
  c.flag = False
  c.widths = (64, 256)
  c.sub = ml_collections.ConfigDict({"k": 3})
  return c


def test_flags_override_with_types():
  c, args = config_lib.parse(base(), ["--steps", "7", "--lr=0.5", "--flag", "true",
                                      "--widths", "1,2,3", "--sub.k", "9", "--resume"])
  assert (c.steps, c.lr, c.flag, c.widths, c.sub.k) == (7, 0.5, True, (1, 2, 3), 9)
  assert args.resume and args.workdir is None
  assert base().steps == 10  # the default config is not mutated


def test_bad_flag_values_are_named():
  with pytest.raises(ValueError, match="--steps takes an integer"):
    config_lib.parse(base(), ["--steps", "many"])
  with pytest.raises(ValueError, match="--flag takes true/false"):
    config_lib.parse(base(), ["--flag", "maybe"])


def test_unknown_flag_exits():
  with pytest.raises(SystemExit):
    config_lib.parse(base(), ["--nope", "1"])
