"""Your own encoder on every device of a pod, with contrax's sharded step and `train.fit`.

    python examples/pod_training.py --workdir /tmp/pod_run            # the devices JAX sees
    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python examples/pod_training.py --workdir /tmp/pod_run          # 8 virtual CPU devices

On a TPU pod or a GPU cluster run the same command on every host with `--distributed`:
`contrax.parallel.initialize_distributed()` joins the hosts (JAX finds the coordinator on Cloud
TPU and under Slurm), the mesh then spans every device of every host, each host reads its
slice of each global batch, and the loss (NT-Xent with all-gathered negatives) and its
gradients equal the single-device ones on the global batch. Run it again with `--resume` to
continue from the last checkpoint (a SIGTERM saves one and exits 0).
"""
from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp

from contrax import data, evaluate, models, objectives, parallel, runs, train
from contrax.methods import contrastive


class SmallConvNet(nn.Module):
  """Any Flax module mapping float images `[n, H, W, C]` in [0, 1] to features `[n, D]`;
  `bn_axis_name` makes its BatchNorm statistics those of the global batch."""
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, images, train: bool = True):
    x = nn.Conv(32, (3, 3))(images - 0.5)
    x = nn.BatchNorm(use_running_average=not train, axis_name=self.bn_axis_name)(x)
    x = nn.relu(nn.Conv(64, (3, 3), strides=2)(nn.relu(x)))
    return jnp.mean(x, axis=(1, 2))


def main(workdir: str, *, steps: int = 200, resume: bool = False,
         distributed: bool = False) -> dict:
  if distributed:
    parallel.initialize_distributed()
  config = train.default_config()  # SimCLR's NT-Xent on the embedded digits data
  config.steps, config.batch_size, config.eval_every, config.progress = steps, 256, 0, True
  mesh = parallel.make_mesh()  # every device of every host on the data axis
  dataset = data.load(config.data, seed=config.seed)
  model = models.ContrastiveModel(
      encoder=SmallConvNet(bn_axis_name=parallel.DATA_AXIS),
      head=models.ProjectionHead(projection_dim=64, bn_axis_name=parallel.DATA_AXIS))
  method = contrastive.method(model, objectives.make(config), config.augmentation)
  optimizer, probe = train.make_optimizer(config), train.create_probe(config, dataset.num_classes)

  run = runs.open_run(workdir, config, image_shape=dataset.train.image_shape, resume=resume)
  state = train.init_state(method, optimizer, jax.random.key(config.seed),
                           dataset.train.image_shape, probe=probe)
  state = run.restore_latest(jax.device_put(state, parallel.replicated(mesh)))
  batches = data.prefetch(data.batches(
      dataset.train, batch_size=config.batch_size, seed=config.seed, start_step=int(state.step),
      process_index=jax.process_index(), process_count=jax.process_count()))
  step = train.make_train_step(method, optimizer, mesh, seed=config.seed, probe=probe)
  state, seconds, images = train.fit(config, state, step, batches, mesh, run,
                                     schedule=train.make_schedule(config),
                                     evaluate_knn=lambda state: float("nan"))
  results = evaluate.evaluate_all(model, state.variables(), dataset, knn_k=20)
  summary = {"devices": mesh.size, "steps": int(state.step),
             "images_per_second": images / seconds if seconds else None,
             **{k: results[k] for k in ("knn_accuracy", "linear_accuracy")}}
  run.finish(summary)
  print(summary)
  return summary


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--resume", action="store_true")
  parser.add_argument("--distributed", action="store_true")
  args = parser.parse_args()
  main(args.workdir, steps=args.steps, resume=args.resume, distributed=args.distributed)
