"""Orbax checkpoints of the training state plus the loop's own bookkeeping (history, best, patience).

One CheckpointManager in `workdir/checkpoints` keeps the latest few steps (to
resume) and the best step by the validation metric (the note's "save your best
model"). Saves are asynchronous; writes are atomic, so a crash leaves either the
previous or the new checkpoint, never half of one.
"""
import logging
import os
from typing import Any

from absl import logging as absl_logging
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies



def _drop_orbax_info(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING or '/orbax/' not in record.pathname


# Orbax logs a dozen INFO lines per save; keep its warnings and errors only.
absl_logging.get_absl_logger().addFilter(_drop_orbax_info)


class Checkpoints:
  """Saves and restores (state, meta) pairs by step.

  Args:
    workdir: the run's directory; checkpoints go to `workdir/checkpoints`.
    keep: how many of the latest steps to keep.
    best_metric: name of the metric that ranks checkpoints, or '' for none.
    best_mode: 'max' or 'min'.
  """

  def __init__(self, workdir: str, keep: int, best_metric: str = '', best_mode: str = 'max'):
    self.directory = os.path.join(workdir, 'checkpoints')
    keep_policies = [policies.LatestN(n=keep)]
    if best_metric:
      keep_policies.append(policies.BestN(
          get_metric_fn=lambda metrics: metrics[best_metric],
          reverse=best_mode == 'min', n=1, keep_checkpoints_without_metrics=False))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep_policies)),
        item_names=('state', 'meta'))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> None:
    """Starts saving in the background; the next save or `close()` waits for it."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), metrics=metrics)

  def restore(self, step: int, state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores `step` into arrays shaped and sharded like `state`."""
    self._manager.wait_until_finished()  # The step may still be being written.
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
