"""The training engine: everything that runs the model, and nothing that writes a run folder
(the one file it keeps is the precision choice's cache in the user cache folder).

- :mod:`~classlab.engine.step`: the one training step (shared by the epoch loop and lr-find)
- :mod:`~classlab.engine.epoch`: one epoch of shuffled, augmented batches
- :mod:`~classlab.engine.evaluate`: loss/accuracy on a split, test-time augmentation
- :mod:`~classlab.engine.batches`: uint8 images -> normalised batches, the epoch's generator
- :mod:`~classlab.engine.precision`: which precision and memory format a run trains with
  (measured, cached or set), and the CPU's description
- :mod:`~classlab.engine.amp`: device, autocast and the fp16 gradient scaler
- :mod:`~classlab.engine.probe`: timing candidate precisions / memory formats
- :mod:`~classlab.engine.compiling`: ``train.compile: auto``, whether torch.compile pays
  for itself on a run (bound, probe, decision)
- :mod:`~classlab.engine.distributed`: torchrun (sharding, all-reduce)
- :mod:`~classlab.engine.ema`, :mod:`~classlab.engine.rng`, :mod:`~classlab.engine.dynamics`:
  weight averaging, RNG states, weight-update logging
"""

from classlab.engine.amp import Amp, resolve_device
from classlab.engine.batches import Normalizer, batch_indices, epoch_generator, steps_per_epoch
from classlab.engine.distributed import Dist, init_distributed
from classlab.engine.dynamics import DynamicsLogger
from classlab.engine.ema import Ema
from classlab.engine.epoch import EpochPlan, EpochResult, EpochStart, train_one_epoch
from classlab.engine.errors import TrainingError
from classlab.engine.evaluate import TTA, EvalResult, evaluate, predict_logits
from classlab.engine.rng import rng_state, seed_everything, set_rng_state
from classlab.engine.step import StepRecipe, backward_and_step, train_step

__all__ = ["Amp", "Dist", "DynamicsLogger", "Ema", "EpochPlan", "EpochResult", "EpochStart",
           "EvalResult", "Normalizer", "StepRecipe", "TTA", "TrainingError", "backward_and_step",
           "batch_indices", "epoch_generator", "evaluate", "init_distributed", "predict_logits",
           "resolve_device", "rng_state", "seed_everything", "set_rng_state", "steps_per_epoch",
           "train_one_epoch", "train_step"]
