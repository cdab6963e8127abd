"""lib.summary writes event files that TensorBoard's own reader reads, framed as its writer frames them."""
import glob

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.summary.writer import record_writer

from lib import summary


class _Bytes:
  def __init__(self):
    self.data = b''

  def write(self, data):
    self.data += data


def test_records_are_framed_as_tensorboards_writer_frames_them():
  for payload in (b'', b'x', bytes(range(256)) * 17):
    theirs = _Bytes()
    record_writer.RecordWriter(theirs).write(payload)
    assert summary.tf_record(payload) == theirs.data


def test_tensorboard_reads_the_scalars_and_the_hparams_table(tmp_path):
  writer = summary.EventWriter(str(tmp_path))
  writer.write_hparams({'learning_rate': 0.1, 'model': 'cnn'})
  writer.write_scalars(10, {'train_loss': 0.5, 'val_accuracy': 0.9})
  writer.write_scalars(20, {'train_loss': 0.25})
  writer.close()
  (path,) = glob.glob(str(tmp_path / 'events.out.tfevents.*'))
  events = event_accumulator.EventAccumulator(path, size_guidance={'tensors': 0})
  events.Reload()
  loss = events.Scalars('train_loss')
  assert [(e.step, e.value) for e in loss] == [(10, 0.5), (20, 0.25)]
  assert [e.value for e in events.Scalars('val_accuracy')] == [pytest.approx(0.9)]
  (table,) = events.Tensors('hparams')
  assert b'| learning_rate | 0.1 |' in table.tensor_proto.string_val[0]
