"""TensorBoard event files without TensorFlow: the scalar and text calls of CLU's MetricWriter.

CLU's writers (and tensorboard's own EventFileWriter, through its gfile
shim) import TensorFlow, seconds at start-up; this one writes the same event
records with tensorboard's record writer into a plain file.
"""
from collections.abc import Mapping
import os
import socket
import time
from typing import Any

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.summary.writer import record_writer


class EventWriter:
  """Scalars and hyperparameters (as a text table) into `logdir/events.out.tfevents.*`.

  Args:
    logdir: the run's directory.
    enabled: False on every process but process 0: nothing is written there.
  """
  def __init__(self, logdir: str, enabled: bool = True):
    self._writer = None
    if enabled:
      os.makedirs(logdir, exist_ok=True)
      name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}'
      self._writer = record_writer.RecordWriter(open(os.path.join(logdir, name), 'wb'))
      self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event: event_pb2.Event) -> None:
    if self._writer is not None:
      self._writer.write(event.SerializeToString())

  def _summary(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
    self._write(
        event_pb2.Event(wall_time=time.time(), step=int(step),
                        summary=summary_pb2.Summary(value=values)))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._summary(
        step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()])

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
        plugin_name='text'))
    self._summary(
        step,
        [
            summary_pb2.Summary.Value(tag=k, metadata=metadata, tensor=tensor_pb2.TensorProto(
                dtype=7, string_val=[v.encode()]))  # 7: DT_STRING.
            for k, v in texts.items()
        ])

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    rows = '\n'.join(f'| {k} | {v} |' for k, v in sorted(hparams.items()))
    self.write_texts(0, {'hparams': f'| field | value |\n|---|---|\n{rows}'})

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
