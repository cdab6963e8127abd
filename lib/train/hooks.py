"""What the loop calls between steps: when it is time, epoch and window means, signals, the profiler."""
from collections.abc import Callable, Iterator
import contextlib
import contextvars
import signal
import threading
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from lib.train.state import TrainState


class StopSignals:
  """Turns SIGINT and SIGTERM into a flag that the loop reads between steps, so it saves first.

  A second signal interrupts at once.
  """
  def __enter__(self):
    self.received = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received:
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name
    logging.warning('%s received: saving a checkpoint, then stopping', self.received)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


# Called after each evaluation as listener(epoch, metrics); True ends training there.
Listener = Callable[[int, dict[str, float]], bool]
_LISTENERS: contextvars.ContextVar[tuple[Listener, ...]] = contextvars.ContextVar(
    'jaxnotes_evaluation_listeners', default=())


@contextlib.contextmanager
def on_evaluation(listener: Listener) -> Iterator[None]:
  """Inside this block `fit` calls `listener(epoch, val_metrics)` after each evaluation; a True
  return ends training there, saved, as early stopping does (e.g. an Optuna pruner's verdict)."""
  token = _LISTENERS.set((*_LISTENERS.get(), listener))
  try:
    yield
  finally:
    _LISTENERS.reset(token)


def listeners() -> tuple[Listener, ...]:
  return _LISTENERS.get()


def flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  flat = {}

  def visit(prefix, value):
    if isinstance(value, dict):
      for k, v in value.items():
        visit(f'{prefix}{k}.', v)
    elif value is not None:
      flat[prefix[:-1]] = value if isinstance(value, (int, float, str, bool)) else str(value)

  visit('', config.to_dict())
  return flat


class Progress:
  """Turns each call's per-step metrics (one transfer) into epoch means and logging windows.

  Args:
    steps_per_epoch: steps of an epoch.
    total_steps: steps of the run.
    log_every_steps: training scalars go to TensorBoard at multiples of this.
  """
  def __init__(self, steps_per_epoch: int, total_steps: int, log_every_steps: int):
    self._spe, self._total, self._log_every = steps_per_epoch, total_steps, log_every_steps
    self._epoch: dict[str, np.ndarray] = {}
    self._window: dict[str, np.ndarray] = {}
    self.epochs: list[dict[str, Any]] = []  # Finished epochs' training means, not yet recorded.
    self.windows: list[tuple[int, dict[str, float]]] = []  # (step, means) to log.
    # Members of a population left out of the check and the means (their loss diverged).
    self.diverged: set[int] = set()

  @staticmethod
  def _means(sums: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(v[0] / v[1]) for k, v in sums.items()}

  def add(self, first_step: int, steps: int, metrics: Any) -> tuple[int, float, int] | None:
    """Adds the `steps` steps after `first_step`.

    `metrics` are a call's CLU Averages, stacked over its steps (a call of one
    step is a stack of one), for a population with a member axis after it:
    the population's mean is recorded (every member counts as many examples).

    Returns:
      (step, loss, member) of the first non-finite loss outside `diverged`, else None
      (and nothing is added: the caller may add the member to `diverged` and call again).
    """
    metrics = jax.device_get(metrics)
    fields = {
        k: (np.asarray(v.total,
                       np.float64).reshape(steps, -1), np.asarray(v.count, np.float64).reshape(
                           steps, -1)) for k, v in vars(metrics).items() if not k.startswith('_')
    }
    losses = fields['loss'][0] / np.maximum(fields['loss'][1], 1)
    alive = np.ones(losses.shape[1], bool)
    alive[sorted(self.diverged)] = False
    bad = np.argwhere(~np.isfinite(losses) & alive)
    if bad.size:
      i, k = bad[0]
      return first_step + int(i) + 1, float(losses[i, k]), int(k)
    fields = {k: (t[:, alive].sum(1), c[:, alive].sum(1)) for k, (t, c) in fields.items()}
    n = steps
    cuts = [
        i + 1 for i in range(n) if (first_step + i + 1) % self._spe == 0 or (first_step + i + 1) %
        self._log_every == 0 or first_step + i + 1 == self._total
    ]
    start = 0
    for cut in sorted({*cuts, n}):
      part = {
          k: np.array([t[start:cut].sum(), c[start:cut].sum()], np.float64)
          for k, (t, c) in fields.items()
      }
      for acc in (self._epoch, self._window):
        for k, v in part.items():
          acc[k] = acc.get(k, 0) + v
      step = first_step + cut
      if step % self._log_every == 0 or step == self._total:
        self.windows.append((step, self._means(self._window)))
        self._window = {}
      if step % self._spe == 0 or step == self._total:
        self.epochs.append({
            'epoch': -(-step // self._spe), 'step': step,
            **{f'train_{k}': v for k, v in self._means(self._epoch).items()}
        })
        self._epoch = {}
      start = cut
    return None


class Profiler:
  """A jax.profiler trace of `steps` steps into logdir/plugins/profile (TensorBoard's profile tab).

  It starts after the first call, so the trace holds steps and not their compilation.
  """
  def __init__(self, steps: int, logdir: str):
    self.steps, self.logdir, self.started_at = steps, logdir, None

  def after_call(self, step: int, state: TrainState) -> None:
    if not self.steps:
      return
    if self.started_at is None:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.logdir)
      self.started_at = step
    elif step - self.started_at >= self.steps:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      logging.info('profile of steps %d-%d written to %s/plugins/profile', self.started_at + 1,
                   step, self.logdir)
      self.steps = 0

  def close(self) -> None:
    if self.started_at is not None and self.steps:
      jax.profiler.stop_trace()


def due(first: int, last: int, period: int, total: int) -> bool:
  """Whether it is time: a call that ran steps (first, last] crossed a multiple of `period`, or ended the run."""
  return last // period > first // period or last == total
