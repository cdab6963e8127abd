"""Config fields shared by the experiments that train through `lib.train.fit`.

An experiment's config starts from `training()` (and `tfds_data()` when it reads
a TFDS dataset) and overrides what it changes. The comments here document each
shared field once. A rerun in a workdir resumes its run; it may change only the
fields that extend or observe it (lib.workdir.RESUMABLE_FIELDS: num_epochs, the
logging, evaluation and checkpoint periods, patience, data_dir, ...): any other
change is refused before any work.
"""
import ml_collections
from ml_collections import config_dict


def training(experiment: str) -> ml_collections.ConfigDict:
  """The engine's fields, with defaults that the experiment's config overrides."""
  c = ml_collections.ConfigDict()
  c.experiment = experiment  # Module of experiments/ that runs this config.
  c.seed = 0  # Seeds the params, the model's random streams and the data order.
  # Train this many models at once, seeds seed, seed + 1, ...: one vmapped program on
  # the device-resident data, each model with its own init, data order and random
  # streams (model k ends as a run with seed + k would). Logged and tracked metrics,
  # the best checkpoint and early stopping follow the mean over the models;
  # results.json reports each seed and the mean and std. 1 is a single run.
  c.num_seeds = 1
  # A population over hyperparameters, in the same one program: setting i takes the
  # i-th value of each non-empty list (equal lengths; an empty list takes the field
  # above), and trains config.num_seeds seeds from its seed. Only hyperparameters the
  # optimizer carries as state can vary (optax.inject_hyperparams): learning_rate
  # (it scales lr_schedule's shape), weight_decay and SGD's momentum. Every member
  # ends as its own single run would, to float rounding; results.json lists each.
  # As with num_seeds, logging, the best checkpoint and early stopping follow the mean
  # over the members. experiments.sweep builds these lists from a grid.
  c.population = ml_collections.ConfigDict({
      'learning_rate': (), 'weight_decay': (), 'momentum': (), 'seed': ()
  })

  # Model.
  c.model = 'cnn'  # A key of lib.models.MODELS.
  c.model_kwargs = ml_collections.ConfigDict()  # The model's attributes (lib/models/).

  # Optimization.
  c.optimizer = 'sgd'  # 'sgd' or 'adam' (optax).
  c.learning_rate = 0.1  # Peak learning rate.
  c.momentum = 0.9  # SGD momentum; 0 is plain SGD. Unused by Adam.
  c.lr_schedule = 'constant'  # 'constant', 'cosine' (to 0 at the end) or 'warmup_cosine'.
  c.warmup_epochs = 0.0  # Linear warmup length for 'warmup_cosine'.
  # Decoupled weight decay on the kernels (AdamW; for SGD added after the momentum and
  # scaled by the rate, SGDW); biases and normalization scales are not decayed. 0 is off.
  c.weight_decay = 0.0
  c.grad_clip_norm = 0.0  # Clip the gradient's global norm to this before the optimizer; 0 is off.
  # Average the gradients of this many steps into one update (optax.MultiSteps): an update
  # of grad_accum_steps * batch_size examples; it must divide steps_per_epoch. 1 is off.
  c.grad_accum_steps = 1
  # Keep an exponential moving average of the params with this decay (e.g. 0.999): evaluated
  # beside them as val_ema_* / test_ema_* (best_metric may name those) and checkpointed. 0 is off.
  c.ema_decay = 0.0
  # The model's arithmetic: 'bfloat16' (for GPU and TPU) casts the params and inputs in the
  # step; the params, gradients and optimizer state stay float32.
  c.compute_dtype = 'float32'
  c.batch_size = 128  # Global: split over all processes and devices, so a multiple of the devices.
  c.eval_batch_size = 1000  # Global evaluation batch; the last one is padded and masked.
  c.num_epochs = 10  # Epochs of steps_per_epoch steps.
  # Keras' meaning: batches per epoch; None is one pass over the training split
  # (examples // batch_size). Smaller values evaluate and checkpoint more often.
  c.steps_per_epoch = config_dict.placeholder(int)
  c.validation_steps = config_dict.placeholder(
      int)  # Batches per evaluation; None is the whole split.
  # Training steps per compiled call (a lax.scan over that many batches), as in
  # Keras: amortizes Python's per-step cost when steps take well under a millisecond.
  # For dense models only: XLA:CPU runs convolutions ~11x slower inside a scan.
  # A longer epoch is rounded down to a multiple of it; shorter epochs run
  # whole, as many per call as fit.
  c.steps_per_execution = 1
  # Steps per compiled call for a population (num_seeds > 1, or a sweep's points that
  # differ only in carried fields); None: steps_per_execution. lib.cpu computes a
  # population's 1-D convolutions in its own kernels, as fast inside a scan, where a
  # single model's stay XLA's. It must divide an epoch: the members evaluate and save
  # after the steps their single runs do.
  c.population_steps_per_execution = config_dict.placeholder(int)
  # The training split is cut into this many equal shards, each shuffled on its
  # own; a process reads its shards, a global batch joins one slice of each.
  # The data order depends on the shards only: runs with the same data_shards
  # see the same global batches on 1 or N processes (N dividing it). 0: one
  # shard per process.
  c.data_shards = 0
  # Permute the training split anew each pass; False reads it in its stored order every
  # pass (the MNIST-1D paper's loop), for splits kept on the devices.
  c.shuffle = True

  # Loop.
  c.log_every_steps = 100  # Training metrics to TensorBoard every this many steps.
  # The terminal gets a line per evaluated epoch, at most one per this many seconds
  # (and the last epoch's): by epoch or by time, whichever is rarer.
  c.log_every_seconds = 5.0
  c.eval_every_epochs = 1  # Validation every this many epochs (and after the last).
  c.checkpoint_every_epochs = 1  # Also saved at the end, on improvement, on SIGINT/SIGTERM.
  c.keep_checkpoints = 2  # Latest checkpoints kept (the best one is kept besides).
  c.best_metric = 'val_loss'  # Ranks checkpoints; '' keeps none as best.
  c.best_mode = 'min'  # 'min' or 'max': which way best_metric improves.
  c.restore_best = False  # End on the best checkpoint's weights (results then report those).
  # Stop after this many evaluations without a better best_metric; 0 never.
  c.early_stopping_patience = 0
  # Trace this many steps (after the first call, which compiles) with jax.profiler into
  # WORKDIR/plugins/profile, for TensorBoard's profile tab; 0 is off.
  c.profile_steps = 0

  # LR range test: instead of lr_schedule, the rate grows exponentially,
  # lr_finder_start * 10 ** (epoch / lr_finder_epochs_per_decade) (the course's
  # 1e-8 * 10 ** (epoch / 20)), until the loss turns NaN or num_epochs end.
  # results.json gets the loss-vs-rate curve and suggested_lr; plots/lr_finder.png.
  c.lr_finder = False
  c.lr_finder_start = 1e-8
  c.lr_finder_epochs_per_decade = 20.0
  return c


def tfds_data(c: ml_collections.ConfigDict, dataset: str) -> ml_collections.ConfigDict:
  """Adds the fields of a TFDS input pipeline to `c` and returns it."""
  c.dataset = dataset  # TFDS name.
  c.data_dir = config_dict.placeholder(str)  # TFDS data_dir; None is ~/tensorflow_datasets.
  # A folder with the dataset's original files (e.g. ../shared/data/mnist):
  # TFDS builds the dataset from it offline and verifies their checksums.
  c.manual_dir = config_dict.placeholder(str)
  c.download = False  # Allow TFDS to download the dataset if it is not prepared (needs internet).
  c.train_split = 'train'  # TFDS split string; e.g. 'train[:90%]' to hold out a validation set.
  # Evaluated every epoch as val_*; ranks checkpoints and drives early stopping.
  # 'test' as in the Keras notebooks; 'train[90%:]' keeps the test set out of model selection.
  c.eval_split = 'test'
  c.test_split = 'test'  # Evaluated once at the end as test_*.
  c.normalization = 'unit'  # Pixels: 'none' (0..255), 'unit' ([0, 1]), 'standardize' (train mean/std).
  # Splits up to this size (as stored, e.g. uint8 images) live on every device and
  # are cached as arrays beside the TFDS data; larger ones stream through tf.data
  # (0: every split streams).
  c.device_data_mb = 2048
  # A streamed split's shuffle buffer in examples (its size shuffles fully); splits
  # on the devices are permuted whole each pass.
  c.shuffle_buffer = 60_000
  return c


def variant(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Applies a variant shared by every training config: '' (as is) or 'tiny'.

  'tiny' runs the same code path for a few steps on small batches: for tests and
  smoke runs, not for numbers.
  """
  if name == 'tiny':
    c.batch_size = 8
    c.eval_batch_size = 16
    c.num_epochs = 2
    c.steps_per_epoch = 3
    c.steps_per_execution = 1
    c.validation_steps = 2
    c.log_every_steps = 2
    c.shuffle_buffer = 64
  elif name:
    raise ValueError(f"unknown config variant {name!r}; choose '' or 'tiny'")
  return c
