"""Config checks, step arithmetic, the optimizer and schedule, and the train state (one model or a population)."""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lib import aot
from lib import parallel
from lib.cpu import conv as cpu_conv
from lib.errors import UserError
from lib.train import population

OPTIMIZERS = ('sgd', 'adam')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine')
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class TrainState(train_state.TrainState):
  """Params, optimizer state and step (from Flax), plus:

  Attributes:
    model_state: the model's other variable collections, e.g. {'batch_stats': ...}; {} if none.
    rng: the run's base key; step s uses fold_in(rng, s), so a resumed run draws the same keys.
    ema_params: with config.ema_decay, the exponential moving average of the
      params (evaluated beside them, checkpointed with them); None otherwise.
  """
  model_state: Any
  rng: jax.Array
  ema_params: Any = None


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks the engine's config fields; cheap, so experiments call it before any work.

  Raises:
    UserError: naming the field, its value and what is allowed.
  """
  def allowed(field, options):
    if config[field] not in options:
      raise UserError(f'config.{field}={config[field]!r} is unknown; choose one of {list(options)}')

  allowed('optimizer', OPTIMIZERS)
  allowed('lr_schedule', SCHEDULES)
  allowed('best_mode', ('max', 'min'))
  allowed('compute_dtype', tuple(COMPUTE_DTYPES))
  for field in ('num_epochs', 'log_every_steps', 'checkpoint_every_epochs', 'eval_every_epochs',
                'keep_checkpoints', 'steps_per_execution'):
    if config[field] < 1:
      raise UserError(f'config.{field}={config[field]} must be at least 1')
  for field in ('steps_per_epoch', 'validation_steps'):
    if config[field] is not None and config[field] < 1:
      raise UserError(
          f'config.{field}={config[field]} must be at least 1, or None for a whole split')
  if (config.get('population_steps_per_execution') is not None and
      config.population_steps_per_execution < 1):
    raise UserError(f'config.population_steps_per_execution={config.population_steps_per_execution}'
                    ' must be at least 1, or None for config.steps_per_execution')
  for field in ('weight_decay', 'grad_clip_norm', 'profile_steps'):
    if config[field] < 0:
      raise UserError(f'config.{field}={config[field]} must be >= 0 (0 is off)')
  if config.grad_accum_steps < 1:
    raise UserError(f'config.grad_accum_steps={config.grad_accum_steps} must be at least 1 '
                    '(1 is off)')
  if not 0 <= config.ema_decay < 1:
    raise UserError(f'config.ema_decay={config.ema_decay} must be in [0, 1) (0 is off; '
                    'e.g. 0.999)')
  if config.get('num_seeds', 1) < 1:
    raise UserError(f'config.num_seeds={config.num_seeds} must be at least 1')
  population.check(config)
  if config.lr_finder and population.size(config) > 1:
    raise UserError('config.lr_finder sweeps the rate for one model: it needs config.num_seeds=1 '
                    'and no config.population')
  if config.lr_finder and config.grad_accum_steps > 1:
    raise UserError('config.lr_finder sweeps the rate step by step: it needs '
                    'config.grad_accum_steps=1')
  if config.log_every_seconds < 0:
    raise UserError(f'config.log_every_seconds={config.log_every_seconds} must be >= 0')
  if config.early_stopping_patience < 0:
    raise UserError('config.early_stopping_patience must be >= 0 (0 never stops early)')
  if (config.restore_best or config.early_stopping_patience) and not config.best_metric:
    raise UserError(
        'config.restore_best and config.early_stopping_patience need config.best_metric')
  # Streamed splits ask for equal shares per device too (lib.input_pipeline).
  parallel.local_batch_size(config.batch_size, 'batch_size', even=False)
  parallel.local_batch_size(config.eval_batch_size, 'eval_batch_size', even=False)


def epochs_to_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> tuple[int, int]:
  """Turns epochs into steps, with Keras' meaning of steps_per_epoch.

  Args:
    config: `batch_size`, `num_epochs`, `steps_per_epoch` (None: one pass
      over the training split, num_train_examples // batch_size; the last
      partial batch is dropped, a different one each pass) and
      `steps_per_execution` (an epoch longer than it is rounded down to a
      multiple of it).
    num_train_examples: examples in the training split.

  Returns:
    (steps_per_epoch, total_steps).
  """
  steps_per_epoch = config.steps_per_epoch or num_train_examples // config.batch_size
  if steps_per_epoch < 1:
    raise UserError(f'config.batch_size={config.batch_size} is larger than the '
                    f'{num_train_examples} training examples')
  if steps_per_epoch > config.steps_per_execution:
    steps_per_epoch -= steps_per_epoch % config.steps_per_execution
  return steps_per_epoch, config.num_epochs * steps_per_epoch


def steps_per_call(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Steps of one compiled call: config.steps_per_execution, or whole epochs where those are shorter.

  A population (more than one member) takes config.population_steps_per_execution
  where it is set, which divides an epoch. A call never ends inside an epoch, so
  evaluations and checkpoints fall between calls; with epochs shorter than
  steps_per_execution (celsius: one step each) a call runs as many whole epochs
  as fit in it.

  Raises:
    UserError: a population's steps per call that do not divide an epoch.
  """
  per_call = config.steps_per_execution
  if population.size(config) > 1 and config.get('population_steps_per_execution'):
    per_call = config.population_steps_per_execution
    if steps_per_epoch % per_call:
      raise UserError(f'config.population_steps_per_execution={per_call} must divide the '
                      f'{steps_per_epoch} steps of an epoch: a population evaluates and saves '
                      'after the steps its single runs do')
  if per_call <= steps_per_epoch:
    return per_call
  return per_call // steps_per_epoch * steps_per_epoch


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
  """`config.lr_schedule` over the run: constant, cosine decay to 0, or linear warmup then cosine."""
  lr = config.learning_rate
  if config.lr_schedule == 'constant':
    return optax.constant_schedule(lr)
  if config.lr_schedule == 'cosine':
    return optax.cosine_decay_schedule(lr, total_steps)
  warmup = int(config.warmup_epochs * steps_per_epoch)
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total_steps)


def _kernels(params: Any) -> Any:
  """Weight decay's mask: the kernels (2 or more axes), not biases or normalization scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                     varied: Sequence[str] = ()) -> optax.GradientTransformation:
  """`config.optimizer` ('sgd' with `config.momentum`, or 'adam') following `schedule`.

  With the config's options (each off at 0, or 1 for grad_accum_steps):
  weight_decay, decoupled from the gradient (AdamW; for SGD added after the
  momentum, then scaled by the rate: SGDW), on kernels only; grad_clip_norm,
  the gradient's global norm clipped first; grad_accum_steps, the gradients of
  that many steps averaged into one update (optax.MultiSteps). `schedule` is
  then a function of the update, not of the step.

  Args:
    config: the run's config.
    schedule: the learning rate of each update.
    varied: hyperparameters of lib.train.population.CARRIED that a population
      varies: the optimizer then holds learning_rate, weight_decay and momentum
      as state (optax.inject_hyperparams), and `set_hyperparameters` gives each
      member its own. Its learning_rate scales `schedule`'s shape.
  """
  decays = bool(config.weight_decay) or 'weight_decay' in varied
  with_momentum = bool(config.momentum) or 'momentum' in varied

  def build(learning_rate, weight_decay, momentum):
    rate = schedule
    if 'learning_rate' in varied:
      rate = lambda update: learning_rate * (schedule(update) / config.learning_rate)
    if config.optimizer == 'sgd' and decays:
      return optax.chain(
          optax.trace(decay=momentum) if with_momentum else optax.identity(),
          optax.add_decayed_weights(weight_decay, mask=_kernels),
          optax.scale_by_learning_rate(rate))
    if config.optimizer == 'sgd':
      return optax.sgd(rate, momentum=momentum if with_momentum else None)
    return optax.adamw(rate, weight_decay=weight_decay,
                       mask=_kernels) if decays else optax.adam(rate)

  values = {k: config[k] for k in population.CARRIED}
  tx = optax.inject_hyperparams(build)(**values) if varied else build(**values)
  if config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  if config.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps).gradient_transformation()
  return tx


def set_hyperparameters(opt_state: Any, values: dict[str, jax.Array]) -> Any:
  """`opt_state` of an optimizer built with `varied`, holding `values` instead of the config's."""
  return optax.tree_utils.tree_set(opt_state, **values)


def create_train_state(
    config: ml_collections.ConfigDict, model: nn.Module, input_shape: Sequence[int],
    input_dtype: Any, tx: optax.GradientTransformation, sharding: jax.sharding.Sharding,
    rng_streams: Sequence[str] = ()) -> TrainState:
  """Initializes params from `config.seed`, replicated over the mesh.

  The state's apply_fn is the model's, its convolutions computed as this backend
  does best (lib.cpu.conv.specialize): the engine's one choice of implementation.

  A population (lib.train.population: config.num_seeds > 1, config.population)
  gets a leading member axis on every leaf, each member initialized as its own
  run would be, its optimizer holding its own hyperparameters.

  Args:
    config: the run's config (`seed`, `num_seeds`, `population`).
    model: the Flax module.
    input_shape: shape of one example's model input, without the batch axis.
    input_dtype: its dtype.
    tx: the optimizer.
    sharding: where the state lives (replicated).
    rng_streams: the model's random streams besides 'params' (e.g. 'dropout').

  Returns:
    The TrainState at step 0.
  """
  def init(seed, hyperparameters):
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
    rngs = dict(zip(('params', *rng_streams), jax.random.split(init_rng, 1 + len(rng_streams))))
    variables = model.init(rngs, jnp.zeros((1, *input_shape), input_dtype), train=False)
    model_state = {k: v for k, v in variables.items() if k != 'params'}
    ema = variables['params'] if config.ema_decay else None
    state = TrainState.create(apply_fn=cpu_conv.specialize(model.apply), params=variables['params'],
                              tx=tx, model_state=model_state, rng=state_rng, ema_params=ema)
    if hyperparameters:
      state = state.replace(opt_state=set_hyperparameters(state.opt_state, hyperparameters))
    return state

  rows, varied = population.table(config), population.varied(config)
  args = [(jnp.int32(r['seed']), {k: jnp.float32(r[k]) for k in varied}) for r in rows]
  if parallel.is_target():  # lib.aot: the state's shapes on the target's devices, no values.
    member_args = jax.tree.map(lambda *a: jnp.stack(a), *args)
    shapes = jax.eval_shape(init if len(rows) == 1 else jax.vmap(init),
                            *(args[0] if len(rows) == 1 else member_args))
    return jax.tree.map(lambda a: aot.abstract(a, sharding), shapes)
  if len(rows) == 1:
    return jax.jit(lambda seed: init(seed, {}), static_argnums=0,
                   out_shardings=sharding)(config.seed)
  return population.init(init, args, sharding)


def current_step(state: TrainState) -> int:
  """The step `state` has trained (the members of a population share it)."""
  return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])
