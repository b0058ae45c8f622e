"""Benchmark: the full SimCLR training step on CPU — contrax vs PyTorch, and augmentation alone.

One step takes a batch of B uint8 32x32x3 images and does augmentation (two SimCLR views of
each image: random resized crop with scale (0.08, 1), horizontal flip, colour jitter
(0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale with p = 0.2), the model on the 2B views
(encoder + SimCLR projector: Linear -> BN -> ReLU -> Linear(128)), NT-Xent at t = 0.5 over
the 2B views, the backward pass and an SGD update (momentum 0.9). Images/second counts the B
images of a batch (each gives 2 views, so the networks process 2B inputs per step).

- `contrax`: `train.make_train_step` (jit + shard_map over a 1-device mesh, on-device
  augmentation `augment.get("simclr")`, cross-replica BN axis, `losses.infonce`) with
  `models.create(name, projection_dim=128)`; the uint8 batch is placed with
  `parallel.shard_host_batch` inside the timed step.
- `PyTorch` (optional: `pip install -e '.[bench]'`; its columns are skipped with a note when
  torch is missing): the same networks (torchvision's `resnet18` with the CIFAR stem — 3x3
  stride-1 conv1 without bias, no max-pool, no fc — or a ConvNet built like contrax's), the
  same projector, NT-Xent and SGD; the views come from `torchvision.transforms.v2` applied
  per image to uint8 tensors on one thread, as a DataLoader worker does (torch sets 1 thread
  there), inside the timed step and in the same process, so augmentation and model run one
  after the other on both sides (a DataLoader with workers would overlap them, on cores the
  model step then shares). The model step is timed on `torch.set_num_threads(os.cpu_count())`
  threads and, by default, on 1 thread too (`torch_threads`: on a shared CPU torch's OpenMP
  pool can lose several times to oversubscription), each with the default (NCHW) and
  channels_last memory formats; the fastest variant is reported and named, the others listed
  under the table. The script asserts that the torch and contrax models have the same number
  of parameters and that the torch NT-Xent equals `contrax.losses.infonce` on the same inputs.

Each step is timed `steps` times after one warm-up call (which compiles, for contrax) and the
median is reported. The arithmetic floor of a step is the FLOPs of the compiled contrax step
(XLA's `cost_analysis()`; an analytic count of the convolution, dense and loss multiply-adds,
x3 for forward + backward, when XLA reports none) divided by the machine's matmul throughput,
measured in the same run (the faster of JAX and torch on a float32 `matmul_size`² matmul).
The augmentation table times augmentation alone: contrax's jitted `augment.two_views` on a
uint8 batch vs the torchvision v2 pipeline called twice per image in a Python loop.

Commands:

    python experiments/benchmarks/train_step.py            # convnet + resnet18, B = 128, 256
    python experiments/benchmarks/train_step.py --config.models=convnet --config.batch_sizes=32 \\
        --config.steps=2

Writes runs/train_step/ (or --workdir): config.json, results.json, results.md (the tables),
summary.json.

Runtime on the 2-core CPU (Intel Xeon @ 2.8 GHz, shared with other jobs): the smoke command
above takes ~1.5 minutes; a ResNet-18 step takes ~30 s at B = 128, and each (model, B) runs
1 + `steps` contrax steps and 4 x (1 + `steps`) PyTorch steps (two memory formats x two
thread counts; `--config.torch_threads=0` halves that), so the default run takes tens of minutes.
The tables print the CPU model, core count, thread counts and library versions next to the
numbers.
"""
from __future__ import annotations

import itertools
import os
import platform
import time

import _harness
import ml_collections

MODELS = ("convnet", "resnet18")
IMAGE_SHAPE = (32, 32, 3)
MEMORY_FORMATS = ("default", "channels_last")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "train_step"
  c.models = MODELS
  c.batch_sizes = (128, 256)
  c.steps = 3  # timed steps after one warm-up call; the median is reported
  c.torch = True  # also time PyTorch (skipped with a note when torch is not installed)
  # intra-op threads of the PyTorch model step, each timed (0: one per core); the fastest is
  # reported. On a CPU shared with other jobs one thread beat one per core 2-5x here.
  c.torch_threads = (0, 1)
  c.projection_dim = 128
  c.temperature = 0.5
  c.learning_rate = 0.1
  c.matmul_size = 4096  # side of the float32 matmul that measures the machine's throughput
  c.seed = 0
  return c


def check_config(config) -> None:
  for name in config.models:
    if name not in MODELS:
      raise ValueError(f"models: unknown model {name!r}; valid: {', '.join(MODELS)}")
  for b in config.batch_sizes:
    if b < 2:
      raise ValueError(f"batch_sizes must be >= 2 (NT-Xent needs negatives), got {b}")
  if config.steps < 1:
    raise ValueError(f"steps must be >= 1, got {config.steps}")
  for n in config.torch_threads:
    if n < 0:
      raise ValueError(f"torch_threads must be >= 0 (0: one per core), got {n}")
  if config.matmul_size < 1:
    raise ValueError(f"matmul_size must be >= 1, got {config.matmul_size}")


def median_seconds(fn, steps: int) -> float:
  """Median wall time of `steps` calls of `fn` after one warm-up call (not timed)."""
  return _harness.time_calls({"fn": fn}, steps)["fn"]["median"]


def host_images(batch: int, seed: int):
  import numpy as np
  return np.random.default_rng(seed).integers(0, 256, (batch, *IMAGE_SHAPE), np.uint8)


# ----------------------------------------------------------------------------- FLOPs
def forward_macs(name: str, projection_dim: int) -> int:
  """Multiply-adds of one forward pass of one 32x32 image (convolutions and dense layers)."""
  from contrax import models

  conv = lambda side, k, c_in, c_out: side * side * k * k * c_in * c_out  # noqa: E731
  side, channels, macs = IMAGE_SHAPE[0], IMAGE_SHAPE[2], 0
  if name == "convnet":
    for i, width in enumerate(models.ConvNet.widths):
      side = side if i == 0 else (side + 1) // 2  # 3x3, padding 1, stride 2
      macs += conv(side, 3, channels, width)
      channels = width
  else:
    macs += conv(side, 3, channels, models.ResNet18.widths[0])
    channels = models.ResNet18.widths[0]
    for stage, (blocks, width) in enumerate(zip(models.ResNet18.stage_sizes,
                                                models.ResNet18.widths)):
      for block in range(blocks):
        if stage > 0 and block == 0:
          side = (side + 1) // 2
          macs += conv(side, 1, channels, width)  # the projection shortcut
        macs += conv(side, 3, channels, width) + conv(side, 3, width, width)
        channels = width
  return macs + channels * channels + channels * projection_dim  # the projector


def analytic_step_flops(name: str, batch: int, projection_dim: int) -> float:
  """~3x the forward FLOPs (backward: gradients of activations and of weights) on 2B views,
  plus the [2B, 2B] similarity matmul (forward and backward); element-wise ops not counted."""
  views = 2 * batch
  return 3 * 2.0 * (forward_macs(name, projection_dim) * views + views * views * projection_dim)


def xla_flops(compiled) -> float | None:
  """FLOPs from `compiled.cost_analysis()` (a dict in jax 0.10; a list of dicts before)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def matmul_flops_per_second(size: int, torch) -> dict:
  """float32 [size, size] @ [size, size]: fastest of 3 runs after a warm-up, in FLOP/s."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  flops = 2.0 * size**3
  a = np.random.default_rng(0).standard_normal((size, size), np.float32)
  x = jnp.asarray(a)
  matmul = jax.jit(lambda x: x @ x)
  contenders = {"jax": lambda: matmul(x)}
  if torch is not None:
    t = torch.from_numpy(a)
    contenders["torch"] = lambda: t @ t
  return {name: flops / seconds["min"]
          for name, seconds in _harness.time_calls(contenders, 3).items()}


# ----------------------------------------------------------------------------- contrax
def measure_contrax_step(name: str, batch: int, config) -> dict:
  import jax
  import numpy as np
  import optax

  from contrax import augment, models, parallel, train
  from contrax.methods import contrastive
  from contrax.losses import infonce

  model = models.create(name, projection_dim=config.projection_dim,
                        bn_axis_name=parallel.DATA_AXIS)
  optimizer = optax.sgd(config.learning_rate, momentum=0.9)
  mesh = parallel.make_mesh(1)
  loss_fn = lambda z1, z2, axis_name=None: infonce(  # noqa: E731
      z1, z2, temperature=config.temperature, axis_name=axis_name)
  method = contrastive.method(model, loss_fn, augment.get("simclr"))
  state = train.init_state(method, optimizer, jax.random.key(config.seed), IMAGE_SHAPE)
  state = jax.device_put(state, parallel.replicated(mesh))
  # No online probe: the torch twin trains none (the probe adds one [B, D] x [D, C] matmul).
  step = train.make_train_step(method, optimizer, mesh, seed=config.seed)
  images = host_images(batch, config.seed)
  start = time.perf_counter()
  compiled = step.lower(state, parallel.shard_host_batch(images, mesh)).compile()
  compile_seconds = time.perf_counter() - start
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = compiled(holder["state"], parallel.shard_host_batch(images, mesh))
    holder["metrics"] = jax.block_until_ready(metrics)

  seconds = median_seconds(one_step, config.steps)
  metrics = holder["metrics"]
  if not bool(metrics["finite"]):
    raise RuntimeError(f"contrax {name} B={batch}: non-finite step (loss {metrics['loss']})")
  return dict(seconds=seconds, images_per_second=batch / seconds,
              compile_seconds=compile_seconds, loss=float(metrics["loss"]),
              params=int(sum(np.size(p) for p in jax.tree.leaves(state.params))),
              xla_flops=xla_flops(compiled),
              analytic_flops=analytic_step_flops(name, batch, config.projection_dim))


def measure_contrax_augmentation(batch: int, config) -> dict:
  import jax
  import jax.numpy as jnp

  from contrax import augment

  aug = augment.get("simclr")
  ids = jnp.arange(batch)
  views = jax.jit(lambda key, x: augment.two_views(aug, key, x, ids))
  images = jnp.asarray(host_images(batch, config.seed))
  keys = iter(jax.random.split(jax.random.key(config.seed), config.steps + 1))
  seconds = median_seconds(lambda: jax.block_until_ready(views(next(keys), images)),
                           config.steps)
  return dict(seconds=seconds, images_per_second=batch / seconds)


# ----------------------------------------------------------------------------- PyTorch
def torch_model(name: str, projection_dim: int, torch, torchvision):
  """The torch twin of `models.create(name)`: encoder + Linear -> BN -> ReLU -> Linear head.

  Inputs are float images in [0, 1], normalised inside as contrax does. BatchNorm momentum
  0.1 in torch's convention is flax's 0.9; eps 1e-5 in both.
  """
  from contrax import models
  nn = torch.nn

  class Normalize(nn.Module):
    def forward(self, x):
      return (x - models.PIXEL_MEAN) / models.PIXEL_SCALE

  if name == "convnet":
    layers, channels = [], IMAGE_SHAPE[2]
    for i, width in enumerate(models.ConvNet.widths):
      layers += [nn.Conv2d(channels, width, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                 nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
      channels = width
    encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
  else:
    encoder = torchvision.models.resnet18(num_classes=projection_dim)
    encoder.conv1 = nn.Conv2d(IMAGE_SHAPE[2], 64, 3, stride=1, padding=1, bias=False)
    encoder.maxpool = nn.Identity()
    encoder.fc = nn.Identity()
    channels = 512
  head = nn.Sequential(nn.Linear(channels, channels, bias=False), nn.BatchNorm1d(channels),
                       nn.ReLU(inplace=True), nn.Linear(channels, projection_dim))
  return nn.Sequential(Normalize(), encoder, head)


def torch_ntxent(z1, z2, temperature: float, torch):
  """NT-Xent over the 2B stacked views: cross-entropy of cosine similarities / t, self excluded."""
  functional = torch.nn.functional
  z = functional.normalize(torch.cat([z1, z2]), dim=1)
  n = z1.shape[0]
  self_mask = torch.eye(2 * n, dtype=torch.bool)
  logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
  targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
  return functional.cross_entropy(logits, targets)


def check_torch_ntxent(config, torch) -> None:
  """The torch NT-Xent must be contrax's loss (same inputs, float32 tolerance)."""
  import numpy as np

  from contrax.losses import infonce
  rng = np.random.default_rng(config.seed)
  z1, z2 = (rng.standard_normal((16, config.projection_dim), np.float32) for _ in range(2))
  ours = float(infonce(z1, z2, temperature=config.temperature))
  theirs = float(torch_ntxent(torch.from_numpy(z1), torch.from_numpy(z2), config.temperature,
                              torch))
  if not np.isclose(ours, theirs, rtol=1e-5):
    raise AssertionError(f"torch NT-Xent {theirs} != contrax infonce {ours}")


def simclr_transform(torchvision):
  v2 = torchvision.transforms.v2
  return v2.Compose([
      v2.RandomResizedCrop(IMAGE_SHAPE[0], scale=(0.08, 1.0), antialias=True),
      v2.RandomHorizontalFlip(),
      v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
      v2.RandomGrayscale(p=0.2),
  ])


def torch_images(batch: int, seed: int, torch):
  """The benchmark's uint8 images as a list of [C, H, W] tensors (a data set's items)."""
  return list(torch.from_numpy(host_images(batch, seed)).permute(0, 3, 1, 2).contiguous())


def torch_two_views(images, transform, torch):
  """Two views per image, one image at a time, collated to uint8 [2B, C, H, W].

  Runs on one torch thread, as in a DataLoader worker (`torch.utils.data` sets 1 there):
  on 32x32 images the intra-op thread pool only adds overhead (the hue adjustment took
  ~20 ms per image with 2 threads vs ~1.2 ms with 1 on the 2-core machine).
  """
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    first = [transform(image) for image in images]
    second = [transform(image) for image in images]
  finally:
    torch.set_num_threads(threads)
  return torch.stack(first + second)


def torch_thread_counts(config) -> list[int]:
  """`config.torch_threads` with 0 read as one thread per core, duplicates dropped."""
  counts = [n if n > 0 else os.cpu_count() for n in config.torch_threads]
  return sorted(set(counts), key=counts.index)


def measure_torch_step(name: str, batch: int, config, torch, torchvision,
                       contrax_params: int) -> dict:
  transform = simclr_transform(torchvision)
  images = torch_images(batch, config.seed, torch)
  by_variant = {}
  for threads, memory_format in itertools.product(torch_thread_counts(config), MEMORY_FORMATS):
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    model = torch_model(name, config.projection_dim, torch, torchvision)
    params = sum(p.numel() for p in model.parameters())
    if params != contrax_params:
      raise AssertionError(f"{name}: torch model has {params} parameters, contrax "
                           f"{contrax_params}: the comparison would not be like-for-like")
    layout = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=layout).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=0.9)
    holder = {}

    def one_step():
      views = torch_two_views(images, transform, torch)
      views = views.to(torch.float32).div_(255).contiguous(memory_format=layout)
      optimizer.zero_grad(set_to_none=True)
      z1, z2 = model(views).chunk(2)
      loss = torch_ntxent(z1, z2, config.temperature, torch)
      loss.backward()
      optimizer.step()
      holder["loss"] = float(loss.detach())

    seconds = median_seconds(one_step, config.steps)
    variant = f"{memory_format} / {threads} thread{'s' if threads > 1 else ''}"
    by_variant[variant] = dict(seconds=seconds, images_per_second=batch / seconds,
                               loss=holder["loss"], params=params)
  torch.set_num_threads(os.cpu_count())
  best = min(by_variant, key=lambda v: by_variant[v]["seconds"])
  return dict(by_variant[best], variant=best,
              seconds_by_variant={v: r["seconds"] for v, r in by_variant.items()})


def measure_torch_augmentation(batch: int, config, torch, torchvision) -> dict:
  transform = simclr_transform(torchvision)
  images = torch_images(batch, config.seed, torch)
  seconds = median_seconds(lambda: torch_two_views(images, transform, torch), config.steps)
  return dict(seconds=seconds, images_per_second=batch / seconds)


# ----------------------------------------------------------------------------- report
def machine(config, torch, torchvision) -> dict:
  import jax
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  info = dict(cpu=cpu, cores=os.cpu_count(), python=platform.python_version(),
              jax=jax.__version__, jax_backend=jax.default_backend())
  if torch is not None:
    info.update(torch=torch.__version__, torchvision=torchvision.__version__,
                torch_threads=torch.get_num_threads(),
                torch_interop_threads=torch.get_num_interop_threads(),
                torch_step_threads=torch_thread_counts(config))
  return info


def fmt(value, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def report(results: dict) -> str:
  m = results["machine"]
  rate = max(results["matmul_flops_per_second"].values())
  lines = [f"Machine: {m['cpu']}, {m['cores']} cores; jax {m['jax']} ({m['jax_backend']}, XLA's "
           f"CPU thread pool over all cores)"
           + (f", torch {m['torch']} ({m['torch_threads']} intra-op / "
              f"{m['torch_interop_threads']} inter-op threads; model step timed on "
              f"{' and '.join(map(str, m['torch_step_threads']))} intra-op threads, "
              f"torchvision transforms on 1), torchvision {m['torchvision']}"
              if "torch" in m else ""),
           "Matmul throughput (float32, {0}x{0}): ".format(results["matmul_size"])
           + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in
                       results["matmul_flops_per_second"].items())
           + f"; the floor uses {rate / 1e9:.1f} GFLOP/s",
           ""]
  if results.get("torch_note"):
    skipped = "; its columns are skipped" if "torch" not in m else ""
    lines += [f"PyTorch: {results['torch_note']}{skipped}", ""]
  head = ["model", "B", "params", "contrax s/step", "contrax img/s", "PyTorch s/step",
          "PyTorch img/s", "PyTorch variant", "contrax speed-up", "GFLOP/step", "floor s",
          "contrax / floor", "PyTorch / floor"]
  lines += ["Training step (augmentation + model on 2B views + NT-Xent + SGD update; img/s "
            "counts the B images, 2 views each; median of the timed steps):", "",
            "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in results["steps"]:
    ours, theirs = row["contrax"], row.get("torch")
    flops = ours["xla_flops"] or ours["analytic_flops"]
    floor = flops / rate
    cells = [row["model"], str(row["batch"]), f"{ours['params']:,}", f"{ours['seconds']:.3f}",
             f"{ours['images_per_second']:.0f}",
             fmt(theirs and theirs["seconds"], ".3f"),
             fmt(theirs and theirs["images_per_second"], ".0f"),
             theirs["variant"] if theirs else "-",
             f"{theirs['seconds'] / ours['seconds']:.2f}x" if theirs else "-",
             f"{flops / 1e9:.2f}" + ("" if ours["xla_flops"] else " (analytic)"),
             f"{floor:.3f}", f"{ours['seconds'] / floor:.1f}",
             fmt(theirs and theirs["seconds"] / floor, ".1f")]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "GFLOP/step: XLA's cost analysis of the compiled contrax step (analytic count "
            "of conv/dense/loss multiply-adds x3 for comparison: "
            + ", ".join(f"{r['model']} B={r['batch']} {r['contrax']['analytic_flops'] / 1e9:.2f}"
                        for r in results["steps"]) + "). floor s = GFLOP/step / matmul "
            "throughput."]
  if any(r.get("torch") for r in results["steps"]):
    lines.append("PyTorch variants timed (s/step; the fastest is in the table): " + "; ".join(
        f"{r['model']} B={r['batch']}: " + ", ".join(
            f"{v} = {s:.3f}" for v, s in r["torch"]["seconds_by_variant"].items())
        for r in results["steps"] if r.get("torch")))
  head = ["B", "contrax img/s", "torchvision img/s", "contrax speed-up"]
  lines += ["", "Augmentation alone (two SimCLR views per image; contrax: jitted two_views on "
            "the uint8 batch; torchvision: v2 transforms per image in a Python loop):", "",
            "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in results["augmentation"]:
    ours, theirs = row["contrax"], row.get("torch")
    cells = [str(row["batch"]), f"{ours['images_per_second']:.0f}",
             fmt(theirs and theirs["images_per_second"], ".0f"),
             f"{theirs['seconds'] / ours['seconds']:.1f}x" if theirs else "-"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  check_config(config)
  torch, torchvision, note = (_harness.import_torch() if config.torch
                              else (None, None, "--config.torch=false"))
  if torch is not None:
    torch.set_num_threads(os.cpu_count())
    check_torch_ntxent(config, torch)
  results = dict(machine=machine(config, torch, torchvision), torch_note=note,
                 matmul_size=config.matmul_size,
                 matmul_flops_per_second=matmul_flops_per_second(config.matmul_size, torch),
                 steps=[], augmentation=[])
  for name in config.models:
    for batch in config.batch_sizes:
      row = dict(model=name, batch=batch, contrax=measure_contrax_step(name, batch, config))
      print(f"{name} B={batch} contrax: {row['contrax']['seconds']:.3f} s/step", flush=True)
      if torch is not None:
        row["torch"] = measure_torch_step(name, batch, config, torch, torchvision,
                                          row["contrax"]["params"])
        print(f"{name} B={batch} PyTorch: {row['torch']['seconds']:.3f} s/step "
              f"({row['torch']['variant']})", flush=True)
      results["steps"].append(row)
  for batch in config.batch_sizes:
    row = dict(batch=batch, contrax=measure_contrax_augmentation(batch, config))
    if torch is not None:
      row["torch"] = measure_torch_augmentation(batch, config, torch, torchvision)
    results["augmentation"].append(row)
  summary = {f"{r['model']}_b{r['batch']}_images_per_second": r["contrax"]["images_per_second"]
             for r in results["steps"]}
  _harness.write(workdir, config, results, report(results), summary)
  return results


if __name__ == "__main__":
  _harness.main(get_config, run)
