"""What a run sets up once (step counts, schedule, state at step 0, compiled steps), and its compile for a target."""
from collections.abc import Callable, Sequence
import dataclasses
import functools
from typing import Any

from absl import logging
from clu import parameter_overview
import flax.linen as nn
import jax
import ml_collections
import optax

from lib import aot
from lib import input_pipeline
from lib import models
from lib import parallel
from lib.errors import UserError
from lib.train import population
from lib.train.state import COMPUTE_DTYPES, TrainState, create_optimizer, create_train_state, epochs_to_steps, learning_rate_schedule, steps_per_call
from lib.train.steps import Task, TrainSteps, evaluate, jit_eval_step, metrics_collection, model_rngs


@dataclasses.dataclass
class Engine:
  """What a run sets up once: its step counts, schedule, initial state and compiled steps."""
  steps_per_epoch: int
  total_steps: int
  per_call: int  # Steps per compiled call.
  schedule: optax.Schedule
  state: TrainState  # At step 0.
  train_steps: TrainSteps
  evaluate: Callable[..., dict[str, Any]]  # (state, split, prefix, max_batches=None).
  train_sharding: jax.sharding.Sharding
  augmentation: input_pipeline.Augmentation
  eval_step: Callable[..., Any]  # The jitted eval step that `evaluate` calls.


def set_up(config: ml_collections.ConfigDict, model: nn.Module, task: Task,
           train: input_pipeline.Source, rng_streams: Sequence[str],
           augmentation: input_pipeline.Augmentation, schedule: optax.Schedule | None) -> Engine:
  """Steps, schedule, the state at step 0 and the compiled train and eval steps."""
  mesh = parallel.make_mesh()
  steps_per_epoch, total_steps = epochs_to_steps(config, train.num_examples)
  per_call = steps_per_call(config, steps_per_epoch)
  if (len(augmentation.train) > 1 or train.buckets) and per_call != 1:
    raise UserError('config.steps_per_execution (and population_steps_per_execution) must be 1 '
                    'here: this experiment changes the batch shape from step to step, and only '
                    'equal batches can be stacked')
  accum = config.grad_accum_steps
  if steps_per_epoch % accum:
    raise UserError(f'config.grad_accum_steps={accum} must divide the {steps_per_epoch} steps '
                    'of an epoch')
  if schedule is None:  # The optimizer's schedule counts updates: one per `accum` steps.
    by_update = learning_rate_schedule(config, total_steps // accum, steps_per_epoch / accum)
    schedule = by_update if accum == 1 else lambda step: by_update(step // accum)
  else:
    by_update = schedule
  example = input_pipeline.model_spec(train, augmentation.train[0])
  state = create_train_state(config, model, example['x'].shape, example['x'].dtype,
                             create_optimizer(config, by_update, population.varied(config)),
                             parallel.replicated(mesh), rng_streams)
  seeds = population.members(state)
  one = population.member(state, 0) if seeds else state
  logging.info(
      'model: %s params%s; %d steps per epoch, %d steps, %d per call; %d devices, %d '
      'processes; training data %s\n%s', f'{models.count_params(one.params):,}',
      f' x {seeds} seeds' if seeds else '', steps_per_epoch, total_steps, per_call,
      parallel.device_count(), parallel.process_count(), train.where,
      parameter_overview.get_parameter_overview(one.params, include_stats=False))
  # The task's value names, found by tracing once without computing.
  batch = {k: jax.ShapeDtypeStruct((1, *s.shape), s.dtype) for k, s in example.items()}
  names = sorted(
      jax.eval_shape(
          lambda s, b: task(
              s.apply_fn({'params': s.params, **s.model_state}, b['x'], train=False, rngs=
                         model_rngs(s.rng, rng_streams)), b), one, batch))
  measured = [f'val_{n}' for n in names]
  measured += [f'val_ema_{n}' for n in names] if config.ema_decay else []
  if config.best_metric and config.best_metric not in measured:
    raise UserError(f'config.best_metric={config.best_metric!r} is not measured; '
                    f'choose one of {measured}')
  dtype = COMPUTE_DTYPES[config.compute_dtype]
  train_steps = TrainSteps(task, metrics_collection(names), mesh, rng_streams, train.preprocess,
                           augmentation, per_call, dtype, config.ema_decay, seeds)
  eval_step = jit_eval_step(task, names, mesh, rng_streams, dtype, seeds)
  run_eval = functools.partial(evaluate, eval_step, batch_size=config.eval_batch_size,
                               augment=augmentation.eval)
  train_sharding = (parallel.stacked_batch_sharding(mesh)
                    if per_call > 1 else parallel.batch_sharding(mesh))
  return Engine(steps_per_epoch, total_steps, per_call, schedule, state, train_steps, run_eval,
                train_sharding, augmentation, eval_step)


def compile_for_target(config: ml_collections.ConfigDict, engine: Engine,
                       train: input_pipeline.Source, val: input_pipeline.Source,
                       test: input_pipeline.Source | None) -> None:
  """lib.aot: compiles every program `fit` would run, on abstract inputs; raises aot.Compiled.

  Each split on the devices is held whole by every device while any program
  runs, so each program's need is its peak plus the splits it does not take.
  """
  splits = {id(s): s for s in (train, val, test) if s is not None}
  for split in splits.values():
    split.require_on_devices('--compile_for')
  held = {k: aot.nbytes(s.device_data()) for k, s in splits.items()}
  members = population.size(config)
  others = lambda split: sum(held.values()) - held[id(split)]

  # Training: each augmentation's call, and one step alone for the per-step figures.
  feed = train.train_feed(config.batch_size, seed=config.seed, shuffle_buffer=0,
                          stack=engine.per_call if engine.per_call > 1 else 0,
                          seeds=population.seeds(config))
  inputs = feed.next(engine.per_call, engine.train_sharding)
  augmentations = len(engine.augmentation.train)
  for which in range(augmentations):
    fn, shape = engine.train_steps.jitted(which), ''
    if augmentations > 1:
      shape = ', x ' + 'x'.join(
          map(str,
              input_pipeline.model_spec(train, engine.augmentation.train[which])['x'].shape))
    per_call = engine.per_call
    steps = engine.total_steps // augmentations
    aot.compile(f'train: {per_call} step{"s" * (per_call > 1)} a call{shape}', fn, engine.state,
                feed.data, inputs, per_call, resident_bytes=others(train),
                calls=-(-steps // per_call), steps=per_call, data_bytes=held[id(train)],
                members=members)
    if per_call > 1:  # XLA counts a scan's body once: one step's FLOPs come from one step.
      aot.compile(f'train: 1 step (its cost){shape}', fn, engine.state, feed.data, inputs, 1,
                  resident_bytes=others(train), calls=steps, steps=1, data_bytes=held[id(train)])

  # Evaluation: every `eval_every_epochs` on val (params, and their average with ema_decay),
  # once on test; each batch gathered and prepared by one program, evaluated by another.
  epochs = config.num_epochs
  passes = {
      id(val): (epochs // config.eval_every_epochs + (epochs % config.eval_every_epochs > 0)) *
               (1 + bool(config.ema_decay))
  }
  if test is not None:
    passes[id(test)] = passes.get(id(test), 0) + 1 + bool(config.ema_decay)
  for key, count in passes.items():
    split = splits[key]
    name = 'val' if split is val else 'test'
    name = 'val and test' if split is val and test is val else name
    batches = split.num_eval_batches(config.eval_batch_size,
                                     config.validation_steps if split is val else None)
    get, args, batch = input_pipeline.eval_batch_program(split, config.eval_batch_size,
                                                         engine.augmentation.eval)
    calls = count * batches
    aot.compile(f'{name}: batch of {config.eval_batch_size} prepared', get, *args,
                resident_bytes=others(split), calls=calls, data_bytes=held[key])
    aot.compile(f'{name}: evaluation step', engine.eval_step, engine.state, batch,
                resident_bytes=sum(held.values()), calls=calls, members=members)
  aot.trained(engine.state)
