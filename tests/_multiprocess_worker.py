"""One process of the multi-process test (tests/test_multiprocess.py), and the run it shares
with the single-process reference.

    python tests/_multiprocess_worker.py --port P --process_id I --num_processes N \
        --local_devices L --out DIR

joins the run through `contrax.parallel.initialize_distributed` (CPU devices, gloo
collectives), trains `STEPS` steps on a mesh over all N·L devices with each process loading
its own slice of every global batch (`contrax.data.batches(process_index, process_count)`),
saves and restores the state through orbax (`contrax.runs`' checkpoint manager, every
process taking part), and on process 0 writes the final and the restored parameters to
`DIR/result.npz`.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

import numpy as np

STEPS = 3
GLOBAL_BATCH = 16
IMAGE_SHAPE = (8, 8, 1)
SEED = 3
# Tests compare programs, not speed: skip XLA's slow backend optimisations.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def dataset():
  from contrax import data
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4 * GLOBAL_BATCH,) + IMAGE_SHAPE, dtype=np.uint8)
  return data.ArraySplit(images, rng.integers(0, 4, 4 * GLOBAL_BATCH))


def run_steps(mesh, process_index: int, process_count: int):
  """`STEPS` training steps of an MLP with cross-replica BatchNorm in its head on `mesh`, with
  an online linear probe on the batches' labels."""
  import jax
  import optax
  from contrax import augment, models, monitor, parallel, train
  from contrax.losses.infonce import infonce
  from contrax.methods import contrastive

  model = models.create("mlp", projection_dim=8, hidden_sizes=(32,), head_batch_norm=True,
                        bn_axis_name=parallel.DATA_AXIS)
  optimizer = optax.sgd(0.5, momentum=0.9)
  method = contrastive.method(model, functools.partial(infonce, temperature=0.5, tau_plus=0.1),
                              augment.Augmentation(noise_std=0.05))
  probe = monitor.OnlineProbe(num_classes=4, optimizer=optax.adam(0.05))
  state = train.init_state(method, optimizer, jax.random.key(0), IMAGE_SHAPE, probe=probe)
  return _train(method, optimizer, state, mesh, process_index, process_count, STEPS,
                probe=probe)


def _train(method, optimizer, state, mesh, process_index: int, process_count: int,
           steps: int, probe=None):
  """`steps` steps of the sharded training step from `state`, each process loading its slice
  of every global batch of `dataset()`; the final state."""
  import jax
  from contrax import data, parallel, train

  state = jax.device_put(state, parallel.replicated(mesh))
  step = train.make_train_step(method, optimizer, mesh, seed=SEED, probe=probe)
  batches = data.batches(dataset(), batch_size=GLOBAL_BATCH, seed=SEED,
                         process_index=process_index, process_count=process_count)
  compiled = None
  for _ in range(steps):
    images, labels = parallel.shard_host_batch(next(batches), mesh)
    if compiled is None:
      compiled = step.lower(state, images, labels).compile(compiler_options=FAST_COMPILE)
    state, metrics = compiled(state, images, labels)
    if not bool(metrics["finite"]):
      raise FloatingPointError(f"{method.name}: non-finite training step")
  return state


# Every method but SimCLR (run_steps above), at test sizes: queues of two global batches,
# small heads, 2 local crops. The losses whose statistics span the global batch (VICReg,
# Barlow Twins) run as the contrastive method's loss.
METHOD_CASES = {
    "byol": {}, "simsiam": {}, "moco_v3": {},
    "moco_v2": {"method.moco_v2.queue_size": 2 * GLOBAL_BATCH},
    "nnclr": {"method.nnclr.queue_size": 2 * GLOBAL_BATCH,
              "method.nnclr.predictor_hidden_dim": 16},
    "swav": {"method.swav.num_prototypes": 12, "method.swav.num_local_crops": 2},
    "dino": {"method.dino.out_dim": 32, "method.dino.hidden_dim": 16,
             "method.dino.bottleneck_dim": 8, "method.dino.num_local_crops": 2},
    "vicreg": {"loss.name": "vicreg"}, "barlow_twins": {"loss.name": "barlow_twins"},
}
# NNCLR's nearest neighbour is an argmax, discontinuous in its inputs: from the third step on,
# this untrained network's support rows are near-duplicates (cosine up to 0.99), and sums
# whose order differs in the last bit can pick different neighbours. Two steps cover
# enqueueing the global batch and reading it back as positives.
METHOD_STEPS = {"nnclr": 2}


def run_method_steps(case: str, mesh, process_index: int, process_count: int):
  """`STEPS` (or METHOD_STEPS) steps of METHOD_CASES[case] built from the main job's config
  (MLP, digits augmentation; SGD: Adam would turn the rounding noise of zero gradients into
  full steps)."""
  import jax
  import optax
  from contrax import methods, train

  config = train.default_config()
  config.update_from_flattened_dict({"projection_dim": 8, **METHOD_CASES[case],
                                     **({"method.name": case} if case in methods.NAMES else {})})
  method = train.create_method(config, train.create_model(config))
  optimizer = optax.sgd(0.1)
  state = train.init_state(method, optimizer, jax.random.key(1), IMAGE_SHAPE)
  return _train(method, optimizer, state, mesh, process_index, process_count,
                METHOD_STEPS.get(case, STEPS))


def leaves(tree) -> list[np.ndarray]:
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--local_devices", type=int, required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--methods", default="",
                      help="comma-separated METHOD_CASES to train instead of the SimCLR run")
  args = parser.parse_args(argv)

  from contrax import parallel
  parallel.initialize_distributed(f"localhost:{args.port}", num_processes=args.num_processes,
                                  process_id=args.process_id,
                                  num_cpu_devices=args.local_devices, initialization_timeout=60)
  import jax
  from contrax import runs

  assert jax.process_count() == args.num_processes, jax.process_count()
  assert jax.local_device_count() == args.local_devices, jax.local_device_count()
  mesh = parallel.make_mesh()
  parallel.check_mesh(mesh)
  if args.methods:
    finals = {case: leaves(run_method_steps(case, mesh, jax.process_index(),
                                            jax.process_count()))
              for case in args.methods.split(",")}
    if parallel.is_chief():
      np.savez(os.path.join(args.out, "methods.npz"),
               **{f"{case}_{i}": x for case, final in finals.items()
                  for i, x in enumerate(final)})
    jax.distributed.shutdown()
    return
  state = run_steps(mesh, jax.process_index(), jax.process_count())

  manager = runs.checkpoint_manager(os.path.join(args.out, "workdir"))
  runs.save(manager, state)
  manager.wait_until_finished()
  restored = runs.restore(manager, state)
  if parallel.is_chief():
    final = leaves(state)
    np.savez(os.path.join(args.out, "result.npz"), num_devices=mesh.size,
             **{f"final_{i}": x for i, x in enumerate(final)},
             **{f"restored_{i}": x for i, x in enumerate(leaves(restored))})
  jax.distributed.shutdown()


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
