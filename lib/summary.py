"""TensorBoard event files without TensorFlow: the scalar and text calls of CLU's MetricWriter.

CLU's writers (and tensorboard's own EventFileWriter, through its gfile
shim) import TensorFlow, seconds at start-up, and even tensorboard's record
writer brings in its TensorFlow stub; this one writes the same TFRecord-framed
event protos into a plain file with the standard library.
"""
from collections.abc import Mapping
import os
import socket
import struct
import time
from typing import Any

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2


def _crc32c_table() -> list[int]:
  table = []
  for n in range(256):
    for _ in range(8):
      n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1  # CRC-32C (Castagnoli), reflected.
    table.append(n)
  return table


_CRC32C = _crc32c_table()


def _masked_crc32c(data: bytes) -> bytes:
  """TFRecord's checksum: CRC-32C of `data`, rotated and offset, little-endian."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return struct.pack('<I', (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tf_record(data: bytes) -> bytes:
  """`data` framed as one TFRecord: length, its checksum, the data, its checksum."""
  length = struct.pack('<Q', len(data))
  return length + _masked_crc32c(length) + data + _masked_crc32c(data)


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
      self._writer = open(os.path.join(logdir, name), 'wb')
      self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event: event_pb2.Event) -> None:
    if self._writer is not None:
      self._writer.write(tf_record(event.SerializeToString()))

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
