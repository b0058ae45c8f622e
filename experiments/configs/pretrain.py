"""Named configs of `experiments/pretrain.py` (`--config NAME`; "digits" by default).

`get_config(name)` returns the ConfigDict of a named config; `FIELD_HELP` describes every field
(its meaning and valid choices), shown by `python experiments/pretrain.py --help`.
"""
from __future__ import annotations

import ml_collections

from contrax import augment, data, methods, models, objectives, runs, train, weights


def cifar10() -> ml_collections.ConfigDict:
  """The CPU-scale CIFAR recipe: SimCLR with a ConvNet on CIFAR-10 from TensorFlow Datasets.

  Data: `tfds:cifar10` (downloaded by TFDS on first use). The recipe was tuned on a
  10,000-image subset of the training set stored as an image folder (one sub-folder per
  class, split 9,000 / 1,000 stratified by `data.load`); to use such a folder, override
  `--config.data=folder:PATH`. Budget: about 30 minutes on a quiet 2-core CPU for 3,500
  steps of batch 128 (README, "Results").
  """
  c = train.default_config()
  c.name = "cifar10"
  c.data = "tfds:cifar10"
  c.model = "convnet"
  c.projection_dim = 128
  c.augmentation = "simclr"
  c.loss.temperature = 0.2
  c.batch_size = 128
  c.steps = 3500
  c.learning_rate = 2e-3
  c.warmup_steps = 200
  c.eval_every = 500
  c.checkpoint_every = 500
  return c


IMAGENET_TRAIN_IMAGES = 1_281_167


def imagenet() -> ml_collections.ConfigDict:
  """A pod recipe: SimCLR on ImageNet-1k at 224 px, batch 4096, LARS, 100 epochs.

  Data: `imagefolder:/data/imagenet` (override `--config.data`): ILSVRC-2012 in the ImageNet
  layout `train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG` (1,281,167 + 50,000 JPEGs), listed at
  start-up and decoded lazily by Grain (`data_workers` processes per host), two host-side
  random-resized crops per image (scale 0.08-1, ratio 3/4-4/3) at 224 px, the rest of the
  augmentation on device. `tfds:imagenet2012` (prepared as array_record) works too.

  Schedule (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
  Representations", Appendix B.1 / B.9): LARS, learning rate 0.3 x batch / 256 = 4.8, weight
  decay 1e-6, 10 warm-up epochs then cosine decay, temperature 0.1, projection 128, 100
  epochs = 100 x 1,281,167 / 4096 = 31,278 steps, ResNet-50 (`resnet50`: the ImageNet stem at
  224 px, 2048-d features). Departures: the augmentation preset
  `all` has SimCLR's CIFAR colour strength (s = 0.5; the paper uses s = 1 on ImageNet); kNN
  evaluation during training is off (`eval_every=0`: it would encode the 1.28 M training
  images), the final kNN / linear probe run once at the end.

  Launch, the same command on every host of the pod (JAX finds the other hosts itself on
  Cloud TPU; elsewhere pass --distributed with the coordinator, as `experiments/pretrain.py`
  documents):

      python experiments/pretrain.py --config imagenet --config.data=imagefolder:/data/imagenet \
          --workdir gs://BUCKET/simclr_imagenet --distributed

  Each host reads its slice of every global batch (batch / hosts images, `data_workers` = 16
  decoding processes for 16 host cores). Throughput needed per chip: a ResNet-50 step at
  224 px takes about 2,000 images/s on one accelerator (the issue's figure), i.e. the loader
  must give about 2,000 images/s per 16 host cores; this machine's measured rate per core is
  in the README (experiments/benchmarks/input_pipeline.py). Memory per device: the step's
  activations at the local batch (4096 / devices) plus replicated parameters and LARS
  state (ResNet-50: 23.5 M parameters plus the head, ~0.3 GB with LARS' momentum); run
  experiments/benchmarks/train_step.py on the target for the measured figure.
  """
  c = train.default_config()
  c.name = "imagenet"
  c.data = "imagefolder:/data/imagenet"
  c.image_size = 224
  c.model = "resnet50"
  c.projection_dim = 128
  c.augmentation = "all"
  c.loss.temperature = 0.1
  c.batch_size = 4096
  epoch = IMAGENET_TRAIN_IMAGES / c.batch_size
  c.steps = round(100 * epoch)
  c.warmup_steps = round(10 * epoch)
  c.optimizer = "lars"
  c.learning_rate = 0.3 * c.batch_size / 256
  c.weight_decay = 1e-6
  c.eval_every = 0
  c.checkpoint_every = 1000
  c.log_every = 100
  c.knn_k = 200
  c.data_workers = 16
  return c


STL10_PRETRAIN_IMAGES = 105_000  # train (5,000 labelled) + unlabelled (100,000)


def stl10() -> ml_collections.ConfigDict:
  """SimCLR on STL-10 at 96 px, the self-supervised protocol: pre-train on the 105,000 images
  of `train+unlabelled` (`pretrain_split`; the unlabelled ones carry label -1 and are left out
  of the online probe), fit the kNN and linear probes on the 5,000 labelled training images,
  score on the 8,000 test images.

  Data: `tfds:stl10`, prepared as array_record (`tfds build stl10 --file_format array_record`;
  its 96 x 96 images share one size, so they take the fixed-size path with the crop on
  device). ResNet-18, batch 256, LARS (0.3 x 256 / 256), temperature 0.1, 100 epochs of the
  105,000 images with 10 warm-up epochs.
  """
  c = train.default_config()
  c.name = "stl10"
  c.data = "tfds:stl10"
  c.pretrain_split = "train+unlabelled"
  c.model = "resnet18"
  c.projection_dim = 128
  c.augmentation = "all"
  c.loss.temperature = 0.1
  c.batch_size = 256
  epoch = STL10_PRETRAIN_IMAGES / c.batch_size
  c.steps = round(100 * epoch)
  c.warmup_steps = round(10 * epoch)
  c.optimizer = "lars"
  c.learning_rate = 0.3
  c.weight_decay = 1e-6
  c.eval_every = 500
  c.checkpoint_every = 500
  return c


CONFIGS = {"digits": train.default_config, "cifar10": cifar10, "imagenet": imagenet,
           "stl10": stl10}


def get_config(name: str | None = None) -> ml_collections.ConfigDict:
  """The named config (`None`: "digits"); ValueError listing the names for an unknown one."""
  name = name or "digits"
  if name not in CONFIGS:
    raise ValueError(f"unknown --config {name!r}; valid choices: {', '.join(sorted(CONFIGS))}")
  return CONFIGS[name]()


def _choices(names) -> str:
  return "one of " + ", ".join(sorted(names))


def _method_help() -> dict:
  """Help of the `method.swav.*` and `method.dino.*` fields (multi-crop fields for both)."""
  crops = {
      "num_global_crops": "{m}: number of global crops (the first views; codes/teacher read them)",
      "global_crop_size": "{m}: side in pixels of the global crops; 0 = the image size",
      "global_crop_scale": "{m}: area range (lo, hi) of the global crops, fractions of the image",
      "num_local_crops": "{m}: number of local crops (multi-crop); 0 = none",
      "local_crop_size": ("{m}: side in pixels of the local crops; 0 = the image size (the mlp "
                          "encoder needs one size; e.g. 16 on CIFAR with a convnet)"),
      "local_crop_scale": "{m}: area range (lo, hi) of the local crops, fractions of the image",
  }
  out = {f"method.{m}.{k}": v.format(m=m) for m in ("swav", "dino") for k, v in crops.items()}
  out.update({
      "method.swav.num_prototypes": "swav: number K of prototypes (unit columns, no bias)",
      "method.swav.temperature": "swav: temperature > 0 of the swapped-prediction softmax",
      "method.swav.epsilon": "swav: entropic regularisation eps > 0 of the Sinkhorn-Knopp codes",
      "method.swav.sinkhorn_iterations": "swav: Sinkhorn-Knopp iterations (on the global batch)",
      "method.dino.out_dim": "dino: number K of head outputs (prototypes)",
      "method.dino.hidden_dim": "dino: hidden width of the head's MLP",
      "method.dino.bottleneck_dim": "dino: L2-normalised bottleneck before the last layer",
      "method.dino.head_layers": "dino: Dense layers of the head's MLP (incl. the bottleneck)",
      "method.dino.student_temp": "dino: student softmax temperature > 0",
      "method.dino.teacher_temp": "dino: teacher temperature > 0 after the warm-up",
      "method.dino.warmup_teacher_temp": "dino: teacher temperature at step 0",
      "method.dino.teacher_temp_warmup_steps": ("dino: steps of the linear teacher-temperature "
                                                "warm-up; 0 = 30% of steps"),
      "method.dino.center_momentum": "dino: EMA momentum of the centre of the teacher outputs",
      "method.dino.teacher_momentum": ("dino: base EMA momentum of the teacher, raised to 1 "
                                       "at the last step by a cosine schedule"),
  })
  return out


FIELD_HELP = {
    "name": "run name; the default workdir is runs/<name>",
    "data": ("data source: digits (embedded, 8x8 grayscale), folder:PATH (one sub-folder of "
             "images per class, one size, read into memory), npz:PATH (x_train, y_train, "
             "x_test, y_test), tfds:NAME (TensorFlow Datasets), imagefolder:PATH (photos of "
             "any size, decoded lazily: PATH/{train,val}/<class>/* or PATH/<class>/*, cropped "
             f"to image_size on the host); {_choices(data.SOURCES)}"),
    "model": (f"encoder: {_choices(models.MODELS)} (resnet50 and the ViTs are for 224-px "
              "images on accelerators; they also run at 32 px)"),
    "projection_dim": "output size of the projection head g (the loss reads z = g(f(x)))",
    "widths": ("convnet / resnet18 / resnet50 stage widths, e.g. 32,64,128,256; () = the "
               "model's default"),
    "patch_size": ("ViT patch size in pixels (vit_tiny, vit_small); 0 = by image size: 16 from "
                   "224 px, else side / 8 (4 at 32 px)"),
    "compute_dtype": ("compute dtype of activations and matmuls: float32, or bfloat16 (mixed "
                      "precision: parameters, optimiser state and the loss stay float32)"),
    "augmentation": f"augmentation preset of both views: {_choices(augment.PRESETS)}",
    "method.name": (f"training method: {_choices(methods.NAMES)} (simclr: the objective "
                    "loss.* with weighting.*; byol, simsiam, moco_v3: a predictor; "
                    "moco_v2: momentum encoder + queue, Chen et al. 2020; nnclr: "
                    "nearest-neighbour positives, Dwibedi et al. 2021; swav, dino: multi-crop, "
                    "Caron et al. 2020, 2021; each with its method.<name>.* fields)"),
    "method.byol.base_momentum": ("byol: EMA momentum m0 in [0, 1] of the target network at step "
                                  "0, rising to 1 at `steps` on a cosine (0.996, Grill et al. "
                                  "2020)"),
    "method.byol.predictor_hidden_ratio": ("byol: predictor hidden width / projection_dim > 0 "
                                           "(16 = 4096 / 256, Grill et al. 2020)"),
    "method.simsiam.predictor_hidden_ratio": ("simsiam: predictor hidden width / projection_dim "
                                              "> 0 (0.25 = 512 / 2048, Chen & He 2021)"),
    "method.moco_v3.base_momentum": ("moco_v3: momentum m0 in [0, 1] of the momentum encoder at "
                                     "step 0, rising to 1 at `steps` on a cosine (0.99, Chen, "
                                     "Xie & He 2021)"),
    "method.moco_v3.temperature": "moco_v3: softmax temperature tau > 0 of the InfoNCE (0.2)",
    "method.moco_v3.predictor_hidden_ratio": ("moco_v3: predictor hidden width / projection_dim "
                                              "> 0 (16 = 4096 / 256, Chen, Xie & He 2021)"),
    "method.moco_v2.momentum": "moco_v2: momentum m in [0, 1] of the key encoder's EMA (0.999)",
    "method.moco_v2.queue_size": ("moco_v2: K, keys kept as negatives (65536); at least the "
                                 "global batch (twice it with symmetric)"),
    "method.moco_v2.temperature": "moco_v2: softmax temperature t > 0 (0.2)",
    "method.moco_v2.symmetric": ("moco_v2: also score view 2's queries against view 1's keys and "
                                "average (MoCo v2 is asymmetric: False)"),
    "method.moco_v2.batch_negatives": ("moco_v2: the batch's other keys are negatives too (MoCo "
                                      "v2: False, the queue only)"),
    "method.moco_v2.beta": ("moco_v2: HCL hardness beta >= 0 of the weights on the batch + queue "
                           "negatives (Robinson et al. 2021); 0 = uniform (MoCo v2)"),
    "method.moco_v2.tau_plus": "moco_v2: debiasing prior tau+ in [0, 1) (HCL: 0.1; MoCo v2: 0)",
    "method.nnclr.queue_size": "nnclr: support set size (98304); at least the global batch",
    "method.nnclr.temperature": "nnclr: softmax temperature t > 0 (0.1)",
    "method.nnclr.predictor_hidden_dim": "nnclr: hidden width of the predictor MLP (4096)",
    **_method_help(),
    "loss.name": f"loss: {_choices(objectives.LOSS_NAMES)}",
    "loss.temperature": "softmax temperature t > 0 of the InfoNCE family and of the weightings",
    "loss.tau_plus": "infonce: debiasing class prior tau+ in [0, 1) (Chuang et al. 2020)",
    "loss.decoupled": "infonce: drop the positive from the denominator (Yeh et al. 2022)",
    "loss.lambda_": "barlow_twins: weight lambda >= 0 of the off-diagonal terms",
    "loss.vicreg.sim_coeff": "vicreg: weight lambda >= 0 of the invariance (MSE) term (25)",
    "loss.vicreg.std_coeff": "vicreg: weight mu >= 0 of the variance hinge term (25)",
    "loss.vicreg.cov_coeff": "vicreg: weight nu >= 0 of the covariance term (1)",
    "loss.vicreg.gamma": "vicreg: target standard deviation gamma > 0 of each dimension (1)",
    "loss.vicreg.eps": "vicreg: epsilon > 0 added to each variance under the square root (1e-4)",
    "weighting.name": f"negative weighting: {_choices(weights.REGISTRY)}",
    "weighting.stop_gradient": "treat the negative weights as constants (the official HCL-OT "
                               "and alpha-CL code do; the official HCL code does not)",
    "batch_size": "global batch size (all devices and processes); divisible by the devices",
    "steps": "training steps; the cosine schedule decays to 0 at this step",
    "optimizer": f"optimiser: {_choices(train.OPTIMIZERS)}",
    "learning_rate": "peak learning rate > 0 (after warm-up)",
    "weight_decay": "decoupled weight decay >= 0 (adamw, sgd, lars)",
    "warmup_steps": "linear warm-up steps from learning rate 0",
    "seed": "seed of the initialisation, data order and augmentations",
    "num_devices": "devices of the data mesh; 0 = all devices JAX sees",
    "log_every": ("steps between training records (loss, grad_norm, learning_rate, the online "
                  "probe's, RankMe and the projections' std)"),
    "eval_every": "steps between kNN evaluations on the test split (and one at step 0); "
                  "0 disables them",
    "checkpoint_every": "steps between checkpoints (one is always written at the end)",
    "on_nonfinite": ("a step with a non-finite loss or update: stop (exit status 1, naming the "
                     "last good checkpoint) or skip (drop its update); one of skip, stop"),
    "on_bad_file": "folder data with unreadable files: skip (reported) or raise; one of raise, "
                   "skip",
    "image_size": ("imagefolder:PATH and TFDS datasets of varying image size: side S of the "
                   "training crops and of the evaluation view (resize + centre crop); 0 = the "
                   "source's own (imagefolder: 224; fixed-size TFDS: as stored)"),
    "crop_scale": ("variable-size sources: random-resized crop area range (lo, hi) as a "
                   "fraction of the image, cut on the host (SimCLR: 0.08,1.0)"),
    "crop_ratio": ("variable-size sources: random-resized crop aspect ratio range w/h, "
                   "log-uniform (SimCLR: 0.75,1.333)"),
    "num_crops": ("variable-size sources: crops per image cut on the host (the method's "
                  "views: 2 for simclr)"),
    "data_workers": ("variable-size sources: Grain decoding processes per host (0 = decode "
                     "in the training process, with threads)"),
    "pretrain_split": ("tfds:NAME only: the TFDS split pre-training reads, e.g. "
                       "train+unlabelled (STL-10; rows labelled -1 have no label); \"\" = the "
                       "train split. kNN and linear probes fit on train, score on test"),
    "knn_k": "neighbours of the kNN evaluation",
    "online_probe": ("train a linear classifier on the detached features of the first view "
                     "inside each step (probe_loss, probe_accuracy in the training records)"),
    "probe_learning_rate": "constant Adam learning rate > 0 of the online probe",
    "progress": "show a progress bar",
}


def describe(config: ml_collections.ConfigDict) -> str:
  """One line per field of `config`: `--config.FIELD (default: VALUE) help`. The objective
  presets (`contrax.objectives.PRESETS`, e.g. hcl = loss.tau_plus 0.1 + weighting.name hcl) are
  listed after the fields."""
  lines = [f"  --config.{k} (default: {v!r}) {FIELD_HELP.get(k, '')}".rstrip()
           for k, v in runs.dotted_fields(config).items()]
  presets = "; ".join(f"{name}: " + (", ".join(f"{k}={v!r}" for k, v in o.items()) or "defaults")
                      for name, o in objectives.PRESETS.items())
  return "\n".join(lines + [f"  objective presets (set these fields): {presets}"])
