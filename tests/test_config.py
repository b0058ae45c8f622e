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


def _pretrain_cli():
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "pretrain.py")
  spec = importlib.util.spec_from_file_location("pretrain_cli", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_pretrain_base_configs_are_valid_and_flags_override_them():
  from contrax import train
  cli = _pretrain_cli()
  for name in cli.CONFIGS:
    train.validate_config(cli.get_config(name))  # every name and number, no data, no compile
  argv = ["--steps", "7", "--config=cifar10", "--batch_size", "64"]
  name = cli._pop_config_name(argv)
  config, _ = config_lib.parse(cli.get_config(name), argv)
  assert (name, config.data, config.model, config.steps, config.batch_size) == (
      "cifar10", "folder:../shared/data/cifar10-train-10k", "convnet", 7, 64)
  assert cli._pop_config_name(["--steps", "3"]) == "digits"
  with pytest.raises(ValueError, match=r"unknown --config 'nope'; valid choices: cifar10, digits"):
    cli.get_config("nope")
