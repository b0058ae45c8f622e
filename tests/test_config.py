"""The main job's command line (experiments/pretrain.py): named configs, --config.FIELD
flags typed by the config's defaults, --help."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pretrain_configs():
  """experiments/configs/pretrain.py, loaded as the CLI loads it."""
  import importlib.util
  path = os.path.join(ROOT, "experiments", "configs", "pretrain.py")
  spec = importlib.util.spec_from_file_location("pretrain_configs", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_pretrain_named_configs_are_valid():
  from contrax import train
  configs = _pretrain_configs()
  assert set(configs.CONFIGS) == {"digits", "cifar10", "imagenet", "stl10"}
  for name in configs.CONFIGS:
    train.validate_config(configs.get_config(name))  # every name and number, no data, no compile
  assert configs.get_config().name == "pretrain" and configs.get_config(None).data == "digits"
  with pytest.raises(ValueError, match=r"unknown --config 'nope'; valid choices: cifar10, "
                     r"digits, imagenet, stl10"):
    configs.get_config("nope")


def test_imagenet_config_is_simclrs_schedule():
  """100 epochs of ImageNet-1k at batch 4096 with 10 warm-up epochs, LARS at 0.3 x B / 256
  (Chen et al. 2020, Appendix B), 224 px host crops."""
  c = _pretrain_configs().get_config("imagenet")
  assert c.steps == round(100 * 1_281_167 / 4096) == 31_278
  assert c.warmup_steps == 3_128 and c.learning_rate == pytest.approx(4.8)
  assert (c.optimizer, c.batch_size, c.image_size, c.loss.temperature) == ("lars", 4096, 224, 0.1)
  assert c.model == "resnet50"
  assert c.data.startswith("imagefolder:") and tuple(c.crop_scale) == (0.08, 1.0)


def test_stl10_config_pretrains_on_train_and_unlabelled():
  """STL-10's protocol: 100 epochs of the 105,000 train+unlabelled images at batch 256; the
  split is a TFDS one, refused by name for any other source."""
  from contrax import train
  c = _pretrain_configs().get_config("stl10")
  assert (c.data, c.pretrain_split) == ("tfds:stl10", "train+unlabelled")
  assert c.steps == round(100 * 105_000 / 256) == 41_016 and c.warmup_steps == 4_102
  c.data = "digits"
  with pytest.raises(ValueError, match=r"pretrain_split='train\+unlabelled' names a TFDS "
                     r"split, but data='digits' is not a tfds:NAME source"):
    train.validate_config(c)


def test_no_project_path_points_outside_the_repository():
  """The CIFAR config reads TFDS (a folder is an override), never a path outside the repository
  (issue 19.9); no code, docstring or test points to developer notes outside it either (the
  formula or docs/references.md instead), and every paper key [P00k] names its paper's author
  in the same file (docs/references.md defines the keys)."""
  cifar = _pretrain_configs().get_config("cifar10")
  assert cifar.data == "tfds:cifar10"
  forbidden = ["../" + "shared", "SPEC" + " §", "DESIGN" + ".md"]
  authors = {"[P000]": "Merad", "[P001]": "Huang", "[P002]": "Jiang", "[P003]": "Lee",
             "[P004]": "Tian"}
  paths = [os.path.join(d, n) for folder in ("contrax", "experiments", "tests")
           for d, _, names in os.walk(os.path.join(ROOT, folder)) for n in names
           if n.endswith(".py")]
  assert len(paths) > 50
  for path in paths:
    with open(path) as f:
      text = f.read()
    for pointer in forbidden:
      assert pointer not in text, (path, pointer)
    for key, author in authors.items():
      assert key not in text or author in text, (path, key)


def run_pretrain(*args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "pretrain.py"), *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_pretrain_help_lists_configs_fields_defaults_and_choices():
  """`--help` (issue 19.10): --config with its names, a line per field with its default and
  help, the valid choices, and the docstring's example commands intact."""
  from contrax import augment, data, models, objectives, runs, train, weights
  done = run_pretrain("--help")
  text = " ".join(done.stdout.split())  # absl wraps lines
  assert "--config: the named config: digits, cifar10, imagenet, stl10" in text, done.stdout
  for field, default in runs.dotted_fields(train.default_config()).items():
    assert f"--config.{field} (default: {default!r})" in text, field
  for choice in (*data.SOURCES, *models.MODELS, *augment.PRESETS, *train.OPTIMIZERS,
                 *objectives.LOSS_NAMES, *weights.REGISTRY, *objectives.PRESETS):
    assert choice in text, choice
  for flag in ("--workdir", "--[no]resume", "--[no]overwrite", "--[no]distributed"):
    assert flag + ":" in text, flag
  assert ("python experiments/pretrain.py --config cifar10 --config.data=folder:PATH"
          in done.stdout)


def test_pretrain_flags_keep_the_element_type_of_tuples(tmp_path):
  """`--config.widths=8,16` arrives as integers: the run's config.json holds [8, 16]."""
  done = run_pretrain("--config", "cifar10", "--config.widths=8,16", "--config.steps=1",
                      "--config.data=digits", "--config.augmentation=digits",
                      "--config.batch_size=1352", "--workdir", str(tmp_path / "run"))
  assert done.returncode == 2 and "batch_size 1352 is larger than the 1347" in done.stderr
  done = run_pretrain("--config.widths=8,16", "--workdir", str(tmp_path / "run"))
  assert done.returncode == 2
  assert "error: widths=(8, 16) applies to the convnet" in done.stderr, done.stderr
