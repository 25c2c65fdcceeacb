"""The config tree: plain dataclasses, one per YAML section, every field documenting itself.

Each field carries its help text, unit, bounds and allowed values in ``metadata`` (see
:func:`_f`); validation (:mod:`classlab.config.validate`) and the README's reference
(:mod:`classlab.config.reference`) are both read from it.

The allowed names of the registries (datasets, models, norms, optimizers, schedulers,
augmentations, CAM methods) are listed here, as plain tuples: config is the vocabulary and
imports no implementation. Each implementing module registers one builder per name, and
``tests/test_architecture.py`` checks that every name here has exactly one builder there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

# --------------------------------------------------------------------------- vocabulary
# Sorted, so that "allowed: ..." in error messages and the reference reads alphabetically.

DATASETS = ("cifar10", "cifar100", "imagefolder", "synthetic")
MODELS = ("fastnet", "resnet18", "resnet34")
NORMS = ("bn", "gn", "ln")
ACTIVATIONS = ("gelu", "relu", "silu")  # model.activation may also say "auto"
OPTIMIZERS = ("adam", "adamw", "muon", "sgd")
SCHEDULERS = ("cosine", "linear", "none", "onecycle", "plateau", "step")
AUGMENTATIONS = ("autoaugment", "colorjitter", "crop", "cutmix", "cutout", "erasing", "flip",
                 "mixup", "normjitter", "randaugment", "rotate", "trivialaugment")
LABEL_NOISE_KINDS = ("matrix", "pairs", "symmetric")
# data.label_noise_kind=pairs on CIFAR-10: each class and its partner (both ways), chosen
# among the classes a trained CIFAR-10 network confuses most; any other dataset pairs its
# classes by id (0-1, 2-3, ...; with an odd number of classes the last keeps its labels)
CIFAR10_NOISE_PAIRS = (("airplane", "ship"), ("automobile", "truck"), ("bird", "frog"),
                       ("cat", "dog"), ("deer", "horse"))
# Settings a run may change when it is resumed: none of them changes the weights a step
# computes (progress display, logging, diagnosis and report, checkpoint interval, where the
# data is read from, evaluation batch). train.device and train.threads may change too (a run
# moved to another machine), but the continuation is then not bit-identical. Every other key
# is the run's trajectory: resume refuses a config.yaml that changed it.
RESUME_MAY_CHANGE = ("name", "data.dir", "data.download", "data.url", "train.progress",
                     "train.checkpoint_minutes", "train.eval_batch_size", "train.device",
                     "train.threads", "log", "diagnose")
# Schedules whose LR at a step does not depend on the run's length: a run on one of them can
# be extended (classlab train --resume RUN --epochs N) exactly as if it had been that long.
EXTENSIBLE_SCHEDULES = ("none", "plateau", "step")

# CAM method -> its display name (figures, the report, tables)
CAM_TITLES = {"eigencam": "Eigen-CAM", "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++",
              "hirescam": "HiResCAM", "layercam": "LayerCAM", "scorecam": "Score-CAM",
              "xgradcam": "XGrad-CAM"}
CAMS = tuple(CAM_TITLES)


def _f(default: Any, help: str, **checks: Any) -> Any:
    """A dataclass field with its help text and optional checks.

    checks: ``choices`` (the allowed values),
    ``ge`` / ``gt`` / ``le`` / ``lt`` numeric bounds, ``unit`` (shown in the reference).
    """
    meta = {"help": help, **checks}
    if isinstance(default, (list, dict)):
        # a deep copy: aug.albumentations' mappings must not be shared between configs
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    name: str = _f("cifar10", "dataset", choices=DATASETS)
    dir: str = _f("", "folder holding cifar-10-batches-py and/or cifar-10-batches-bin "
                  "(cifar100: cifar-100-python and/or cifar-100-binary; imagefolder: "
                  "train/<class>/, test/<class>/, optional val/<class>/) (empty: "
                  "$CLASSLAB_DATA or ~/.cache/classlab); --data-dir overrides it")
    download: bool = _f(False, "download the official archive when the data is absent")
    url: str = _f("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                  "where data.download fetches the archive from (cifar100 fetches the "
                  "CIFAR-100 archive while this is left at the CIFAR-10 default)")
    val_split: float = _f(0.1, "fraction of the training set held out, stratified, for "
                          "validation (0.1 = 5,000 CIFAR-10 images); 0 disables it; "
                          "imagefolder uses its val/ folder instead when there is one",
                          ge=0.0, lt=1.0, unit="fraction")
    subset: int = _f(0, "train on a stratified subset of this many images (0: all)",
                     ge=0, unit="images")
    synthetic_size: int = _f(2000, "images per split for the synthetic dataset "
                             "(train; test gets half)", ge=20, unit="images")
    seed: int = _f(0, "seed of the validation split and subset (independent of train.seed)",
                   ge=0, lt=2**32)
    image_size: int = _f(32, "imagefolder: side of the square images every picture is "
                         "brought to (see data.resize)", ge=8, unit="pixels")
    resize: str = _f("resize", "imagefolder: resize = scale to image_size x image_size "
                     "(aspect ratio not kept); center_crop = scale the shorter side to "
                     "image_size, then keep the central square",
                     choices=["resize", "center_crop"])
    label_noise: float = _f(0.0, "label-noise experiment: the fraction of the training "
                            "split's labels replaced by another class before training (exactly "
                            "round(rate x images), spread over the classes in proportion to "
                            "their sizes; see data.label_noise_kind). The changed images are "
                            "listed in <run>/label_noise.csv; the validation split (carved "
                            "first) and the test set keep their true labels (0: off)",
                            ge=0.0, lt=1.0, unit="fraction")
    label_noise_kind: str = _f("symmetric", "symmetric = the new label is uniform among the "
                               "other classes; pairs = each class flips to its partner "
                               "(CIFAR-10: airplane<->ship, automobile<->truck, bird<->frog, "
                               "cat<->dog, deer<->horse; other datasets: class 0<->1, 2<->3, "
                               "...); matrix = data.label_noise_matrix",
                               choices=LABEL_NOISE_KINDS)
    label_noise_matrix: list[list[float]] = _f(
        [], "label_noise_kind=matrix: the transition matrix, one row per class: row i holds "
        "the fractions of class i's training images given label j (each row sums to 1; the "
        "diagonal is the fraction kept), applied as exact counts per class; data.label_noise "
        "stays 0, the matrix sets the rates")
    label_noise_seed: int = _f(0, "seed of the label noise (which images, which new labels), "
                               "independent of data.seed and train.seed", ge=0, lt=2**32)
    exclude: str = _f("", "a CSV file of training-split indices left out of training, e.g. "
                      "the suspected label errors of classlab data-issues RUN --split train "
                      "--out FILE (an index column; rows whose split column is test are "
                      "ignored; or one index per line). Indices count the training split as "
                      "classlab builds it: the training images in their original order after "
                      "the validation split and data.subset are taken out. Copied into "
                      "<run>/excluded.csv (empty: train on all)")


@dataclass
class ModelConfig:
    name: str = _f("resnet18", "architecture", choices=MODELS)
    norm: str = _f("bn", "normalization layer: bn=BatchNorm, ln=LayerNorm (GroupNorm with "
                   "one group), gn=GroupNorm", choices=NORMS)
    gn_groups: int = _f(32, "groups for norm=gn (must divide every layer's channels)", ge=1)
    width: int = _f(64, "channels of the first stage; later stages double it", ge=1,
                    unit="channels")
    activation: str = _f("auto", "activation after the norms: auto = the architecture's own "
                         "(relu for resnet, gelu for fastnet; fastnet's GELU after its "
                         "whitening layer stays whatever this says)",
                         choices=("auto", *ACTIVATIONS))


@dataclass
class OptimConfig:
    name: str = _f("adam", "optimizer", choices=OPTIMIZERS)
    lr: float = _f(1e-3, "learning rate (the peak LR for onecycle)", gt=0.0)
    weight_decay: float = _f(1e-4, "weight decay: L2 added to the gradient for sgd/adam, "
                             "decoupled for adamw", ge=0.0)
    momentum: float = _f(0.9, "SGD momentum (ignored by adam/adamw; muon: of the non-filter "
                         "parameters)", ge=0.0, lt=1.0)
    nesterov: bool = _f(False, "Nesterov momentum for SGD")
    beta1: float = _f(0.9, "Adam/AdamW beta1", ge=0.0, lt=1.0)
    beta2: float = _f(0.999, "Adam/AdamW beta2", ge=0.0, lt=1.0)
    muon_lr: float = _f(0.24, "muon: LR of the conv filters (4-D weights), whose updates are "
                        "orthogonalised and whose banks are kept at norm sqrt(out channels); "
                        "every other parameter takes SGD steps with optim.lr", gt=0.0)
    muon_momentum: float = _f(0.6, "muon: Nesterov momentum of the conv filters", ge=0.0,
                              lt=1.0)
    no_decay_norm_bias: bool = _f(False, "exempt norm weights and biases from weight decay")
    norm_bias_lr_scale: float = _f(1.0, "LR multiplier for norm weights and biases", gt=0.0)
    whiten_bias_epochs: float = _f(0.0, "fastnet: train the whitening layer's bias (set from "
                                   "the data) for the first N epochs, its LR (optim.lr x "
                                   "norm_bias_lr_scale) falling linearly to 0 over them, then "
                                   "freeze it (airbench94_muon: 3; 0: frozen throughout)",
                                   ge=0.0, unit="epochs")
    lookahead_every: int = _f(0, "Lookahead: every N optimizer steps pull the weights back "
                              "toward a slow copy, more strongly late in training; the final "
                              "weights are the slow ones (0: off; airbench uses 5)", ge=0,
                              unit="steps")
    lookahead_decay: float = _f(0.95, "Lookahead: per-step decay of the slow weights at the end "
                                "of training; at step t of T a sync keeps "
                                "decay**every * (t/T)**3 of the slow copy", gt=0.0, lt=1.0)


@dataclass
class SchedConfig:
    name: str = _f("onecycle", "LR schedule", choices=SCHEDULERS)
    # onecycle
    pct_start: float = _f(0.3, "onecycle: fraction of steps spent increasing the LR",
                          gt=0.0, lt=1.0, unit="fraction")
    div_factor: float = _f(25.0, "onecycle: initial LR = lr / div_factor", gt=0.0)
    final_div_factor: float = _f(1e4, "onecycle: final LR = initial LR / final_div_factor",
                                 gt=0.0)
    three_phase: bool = _f(False, "onecycle: use the three-phase variant")
    cycle_momentum: bool = _f(True, "onecycle: cycle momentum/beta1 inversely to the LR")
    # step
    step_size: int = _f(10, "step: epochs between LR drops", ge=1, unit="epochs")
    gamma: float = _f(0.1, "step: LR multiplier at each drop", gt=0.0, le=1.0)
    # plateau
    monitor: str = _f("val_loss", "plateau: metric watched (never a test metric)",
                      choices=["val_loss", "val_acc", "train_loss"])
    factor: float = _f(0.2, "plateau: LR multiplier on a plateau", gt=0.0, lt=1.0)
    patience: int = _f(3, "plateau: epochs without improvement before a drop", ge=0,
                       unit="epochs")
    min_lr: float = _f(0.0, "plateau: lower bound on the LR", ge=0.0)
    # cosine / linear
    warmup_epochs: float = _f(0.0, "cosine/linear: linear warm-up length", ge=0.0,
                              unit="epochs")
    final_lr_frac: float = _f(0.0, "cosine/linear: final LR as a fraction of optim.lr",
                              ge=0.0, le=1.0, unit="fraction")


# The batched default (pad 4 + random 32x32 crop, flip, rotate +-5 degrees, 16x16 cutout)
# written in albumentations 2.x. "fill: mean" is the training set's mean colour, which is
# what the batched ops fill with (0 after normalisation). CoarseDropout keeps its hole
# inside the image, while cutout (DeVries & Taylor; the batched op) centres the square
# anywhere and clips it at the border (196 pixels removed on average, not 256): the Pad /
# Crop pair around it gives CoarseDropout that same border. The list assumes 32x32 images.
ALBUMENTATIONS_DEFAULT: list[dict[str, Any]] = [
    {"name": "Pad", "padding": 4, "fill": "mean"},
    {"name": "RandomCrop", "height": 32, "width": 32},
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "Rotate", "limit": 5, "fill": "mean", "p": 1.0},
    {"name": "Pad", "padding": [8, 8, 7, 7], "fill": "mean"},
    {"name": "CoarseDropout", "num_holes_range": [1, 1], "hole_height_range": [16, 16],
     "hole_width_range": [16, 16], "fill": "mean", "p": 1.0},
    {"name": "Crop", "x_min": 8, "y_min": 8, "x_max": 40, "y_max": 40},
]


@dataclass
class AugConfig:
    backend: str = _f("batched", "where train-time augmentation runs: batched = aug.ops as "
                      "whole-batch tensor ops on the training device; albumentations = the "
                      "aug.albumentations transforms, image by image in DataLoader workers "
                      "(needs the albumentations package; aug.ops and the batched ops' "
                      "settings are then ignored, except by lr-find, which always uses them, "
                      "and except mixup and cutmix, which act on the batch at the training "
                      "step under either backend)",
                      choices=["batched", "albumentations"])
    ops: list[str] = _f(["crop", "flip", "rotate", "cutout"],
                        "batched train-time augmentations, applied in this order; mixup and "
                        "cutmix (which also mix the targets) are applied last, at the training "
                        "step, whatever their place in the list",
                        choices=AUGMENTATIONS)
    crop_padding: int = _f(4, "crop: pixels of padding before the random 32x32 crop", ge=0,
                           unit="pixels")
    pad_mode: str = _f("zeros", "crop: padding mode", choices=["zeros", "reflect"])
    flip_p: float = _f(0.5, "flip: probability of a horizontal flip", ge=0.0, le=1.0)
    flip_mode: str = _f("random", "flip: random = a fresh coin per image and epoch (flip_p); "
                        "alternate = every training image is mirrored in every other epoch, "
                        "a random half in odd epochs and the other half in even ones "
                        "(airbench's derandomised flip; flip_p is then ignored)",
                        choices=["random", "alternate"])
    rotate_degrees: float = _f(5.0, "rotate: maximum absolute angle, uniform in [-d, d]",
                               ge=0.0, le=180.0, unit="degrees")
    cutout_size: int = _f(16, "cutout: side of the zeroed square (clipped at borders)", ge=1,
                          unit="pixels")
    cutout_p: float = _f(1.0, "cutout: probability per image", ge=0.0, le=1.0)
    randaugment_n: int = _f(3, "randaugment: ops applied to each image, each uniform over its "
                            "14 (identity included); 3 is the paper's CIFAR-10 setting", ge=1,
                            le=14, unit="ops")
    randaugment_m: float = _f(5.0, "randaugment: magnitude of every op on the paper's 0-10 "
                              "scale (10: rotation 30 degrees, shear 0.3, translation 150/331 "
                              "of the side, colour/contrast/brightness/sharpness factor 1 +- "
                              "0.9, posterize to 4 bits, solarize at threshold 0); 5 is the "
                              "paper's CIFAR-10 setting for Wide-ResNet-28-10", ge=0.0,
                              le=10.0)
    jitter_brightness: float = _f(0.4, "colorjitter: brightness factor uniform in [1 - j, 1 + "
                                  "j] per image (0: off)", ge=0.0, le=1.0)
    jitter_contrast: float = _f(0.4, "colorjitter: contrast factor uniform in [1 - j, 1 + j] "
                                "(0: off)", ge=0.0, le=1.0)
    jitter_saturation: float = _f(0.4, "colorjitter: saturation factor uniform in [1 - j, 1 "
                                  "+ j] (0: off)", ge=0.0, le=1.0)
    jitter_hue: float = _f(0.0, "colorjitter: hue rotation uniform in [-h, h] turns (0: off)",
                           ge=0.0, le=0.5, unit="turns")
    norm_brightness: float = _f(0.14, "normjitter: add b uniform in [-j, j] to every value of "
                                "an image, after normalisation (hiverge's cifar10-speedrun: "
                                "0.14)", ge=0.0, unit="channel std")
    norm_contrast: float = _f(0.13, "normjitter: then multiply the image by c uniform in [1 - "
                              "j, 1 + j], about the dataset's mean colour (hiverge's: 0.13)",
                              ge=0.0, lt=1.0)
    erasing_p: float = _f(0.5, "erasing: probability per image of erasing a random rectangle "
                          "(Zhong et al.'s CIFAR setting)", ge=0.0, le=1.0)
    erasing_max_area: float = _f(0.4, "erasing: largest rectangle, as a fraction of the image "
                                 "(the area is uniform from 0.02 to this; aspect ratio "
                                 "log-uniform in [0.3, 1/0.3])", gt=0.02, le=1.0,
                                 unit="fraction")
    erasing_fill: str = _f("random", "erasing: what replaces the rectangle: random = uniform "
                           "random pixel values (the paper's), mean = the training set's mean "
                           "colour", choices=["random", "mean"])
    mixup_alpha: float = _f(1.0, "mixup: each mixed image's weight is Beta(alpha, alpha) (1: "
                            "uniform, Zhang et al.'s CIFAR-10 setting). Under mixup or cutmix "
                            "the loss is the cross-entropy against the mixed soft targets "
                            "(with train.label_smoothing on both labels), train_loss reports "
                            "it, and train_acc counts a prediction right when it is the mixed "
                            "image's dominant label (weight >= 1/2)", gt=0.0)
    cutmix_alpha: float = _f(1.0, "cutmix: the kept share of each image is Beta(alpha, alpha) "
                             "(Yun et al.'s CIFAR setting: 1)", gt=0.0)
    mix_p: float = _f(1.0, "mixup/cutmix: probability that an image is mixed (timm's "
                      "mixup_prob, drawn per image)", ge=0.0, le=1.0)
    mix_switch_p: float = _f(0.5, "with both mixup and cutmix in aug.ops: probability that a "
                             "mixed image gets cutmix rather than mixup (timm's switch_prob)",
                             ge=0.0, le=1.0)
    mix_off_epoch: int = _f(0, "mixup/cutmix: no mixing from this epoch on, to end on "
                            "unmixed images (timm's mixup_off_epoch; 0: mix in every epoch)",
                            ge=0, unit="epochs")
    albumentations: list[dict[str, Any]] = _f(
        ALBUMENTATIONS_DEFAULT, "backend=albumentations: the transforms, in order, each a "
        "mapping {name: <albumentations class>, <argument>: <value>, ...}; fill: mean is the "
        "training set's mean colour. The default is the batched default above (for 32x32 "
        "images)")
    workers: int = _f(2, "backend=albumentations: DataLoader worker processes (0: augment in "
                      "the training process)", ge=0, unit="processes")


@dataclass
class TrainConfig:
    epochs: int = _f(40, "number of epochs", ge=1, unit="epochs")
    batch_size: int = _f(256, "images per training step (global, across all processes)", ge=1,
                         unit="images")
    eval_batch_size: int = _f(1000, "images per evaluation forward pass", ge=1, unit="images")
    seed: int = _f(1, "seed of weights init, shuffling and augmentation", ge=0, lt=2**32)
    device: str = _f("auto", "auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    precision: str = _f("auto", "autocast dtype; auto: on CPU the faster of fp32 and bf16, "
                        "measured for this model and batch at the start of the run (cached per "
                        "machine); on CUDA bf16 where the card supports it, else fp16 with a "
                        "gradient scaler", choices=["auto", "fp32", "bf16", "fp16"])
    channels_last: bool | str = _f("auto", "memory format of images and weights: true = "
                                   "channels_last, false = contiguous (NCHW), auto = the faster, "
                                   "measured together with train.precision", unit="auto, true or "
                                   "false")
    compile: bool | str = _f("auto", "torch.compile the training step's network: true, false, "
                             "or auto = only when the saving per step x the run's steps beats "
                             "1.25x the compile time, measured for this model, batch, precision "
                             "and layout at the start of the run (cached per machine; a run "
                             "too short to gain even if compiling saved 100% is not compiled "
                             "to check)", unit="auto, true or false")
    sync_bn: bool = _f(False, "under torchrun: synchronise BatchNorm statistics across "
                       "processes (SyncBatchNorm; CUDA only: torch's SyncBatchNorm is "
                       "GPU-only, so a CPU run refuses it)")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy", ge=0.0, lt=1.0)
    grad_clip: float = _f(0.0, "clip gradients to this total L2 norm (0: off)", ge=0.0)
    ema_decay: float = _f(0.0, "keep an exponential moving average of the weights with this "
                          "decay per step and evaluate it (0: off; e.g. 0.99)", ge=0.0, lt=1.0)
    tta: str = _f("none", "test-time augmentation in evaluation: average the logits of the "
                  "image and its mirror (flip), plus 1-pixel shifts (flip_translate)",
                  choices=["none", "flip", "flip_translate"])
    tta_fraction: float = _f(1.0, "train.tta on only this fraction of each evaluation batch: "
                             "the images whose plain view is least confident (lowest top "
                             "probability); the others keep the plain view's logits. 1: every "
                             "image", gt=0.0, le=1.0, unit="fraction")
    eval_every: int = _f(1, "evaluate val and test every N epochs and always after the last; "
                         "0: only after the last (skipped epochs log empty cells; saves time "
                         "when evaluation, e.g. with TTA, is costly)", ge=0, unit="epochs")
    threads: int = _f(0, "CPU threads for torch (0: every core of the process's CPU affinity, "
                      "divided among the processes of a torchrun job; OMP_NUM_THREADS, when set, "
                      "wins)", ge=0)
    progress: bool = _f(True, "show a progress bar per epoch")
    checkpoint_minutes: float = _f(10.0, "also write a mid-epoch checkpoint (midepoch.pt) "
                                   "when this long has passed since the last checkpoint, so "
                                   "a killed job loses at most this much (0: only at epoch "
                                   "ends, and on SIGTERM / Ctrl-C)", ge=0.0, unit="minutes")
    init_from: str = _f("", "a run folder whose trained weights (its EMA weights when it kept "
                        "them) start this run instead of a random initialisation: weights "
                        "only, a fresh optimizer and schedule; recorded in summary.json "
                        "(empty: random initialisation)")
    early_stop_patience: int = _f(0, "early stopping: stop when train.early_stop_metric has not "
                                  "improved by more than train.early_stop_min_delta for this many "
                                  "epochs in a row; the run is then finished, with its last "
                                  "epoch's weights, and summary.json says when and why "
                                  "(stopped_early) (0: off; needs a validation split and "
                                  "train.eval_every=1)", ge=0, unit="epochs")
    early_stop_metric: str = _f("val_loss", "early stopping: the validation metric watched "
                                "(never a test metric)", choices=["val_acc", "val_loss"])
    early_stop_min_delta: float = _f(0.0, "early stopping: an epoch improves on the best so "
                                     "far only by more than this, in the metric's units (loss, "
                                     "or accuracy in % points)", ge=0.0)


@dataclass
class LogConfig:
    dynamics_every: int = _f(50, "log per-layer gradient norms and update/weight ratios every "
                             "N steps (0: off)", ge=0, unit="steps")
    tensorboard: bool = _f(False, "also write TensorBoard event files (train/val/test loss "
                           "and acc, lr; one point per epoch) into <run>/tensorboard/; needs "
                           "the tensorboard package")
    mlflow: bool = _f(False, "also record the run in MLflow: params (the flat config), every "
                      "number of each epoch's metrics row (step = epoch), the summary's "
                      "numbers, and the report, config, metrics and checkpoint as artifacts; "
                      "a grid's points are nested runs under the grid's run; a failed MLflow "
                      "call warns once and training goes on; needs classlab[mlflow]")
    mlflow_uri: str = _f("", "MLflow tracking URI, e.g. a server (http://host:5000) (empty: a "
                         "local SQLite store that needs no server, mlruns/mlflow.db with "
                         "artifacts in mlruns/artifacts/, in the folder holding the run folders "
                         "(--out); a grid's: beside its grid folder)")
    mlflow_experiment: str = _f("classlab", "MLflow experiment the runs go into (made when "
                                "missing)")
    data_dynamics: bool = _f(True, "record, for every training image and epoch, the margin "
                             "(logit of its label minus the largest other logit), the "
                             "probability of its label, the strongest other class and whether "
                             "it was right, from the training step's own forward pass of the "
                             "augmented image (no extra pass) into <run>/data_dynamics.pt: the "
                             "area under the margin, the data map and forgetting events of the "
                             "report's \"Is it the data?\" section and classlab data-issues")


@dataclass
class DiagnoseConfig:
    enabled: bool = _f(True, "run diagnostics and write the report at the end of training")
    layers: list[str] = _f(["layer1", "layer2", "layer3", "layer4"],
                           "model layers shown by the CAM grid")
    method: str = _f("gradcam", "class-activation-map method; all = every method on the same "
                     "images, compared in one figure with their faithfulness scores (the CAM "
                     "grids then show gradcam)", choices=[*CAMS, "all"])
    count: int = _f(20, "misclassified images shown in the gallery and CAM grid", ge=1,
                    unit="images")
    target: str = _f("pred", "CAM target class", choices=["pred", "true"])
    faithfulness_steps: int = _f(16, "deletion/insertion curves of the shown CAMs: each step "
                                 "removes (or reveals) another 1/steps of the pixels, most "
                                 "relevant first", ge=2, le=1024, unit="steps")
    faithfulness_fill: str = _f("mean", "what removed pixels become in the deletion/insertion "
                                "curves: mean = the training set's mean colour, blur = the "
                                "image blurred (Gaussian, sigma = image side / 16 pixels)",
                                choices=["blur", "mean"])
    sanity_images: int = _f(10, "of the images shown, how many the model-randomisation check "
                            "uses: their CAMs are recomputed after each re-initialisation step "
                            "(score-cam costs one forward pass per image and channel)", ge=1,
                            unit="images")


@dataclass
class Config:
    name: str = _f("run", "run name; the run folder is <out>/<name>-<timestamp>")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig)
