"""TFDS datasets found, checked and built offline, without importing TensorFlow until a build.

`check` runs before any work: it names an unknown dataset, a dataset that is
not prepared and may not be downloaded, and a `manual_dir` without the right
original files (each checked by size and SHA-256), each in one line. `build`
then builds the dataset; with `download=False` nothing touches the network.
"""
import difflib
import hashlib
import os
import tempfile
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from lib.errors import UserError


def builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `config.dataset` in `config.data_dir`, not yet prepared.

  Raises:
    UserError: the name is not a TFDS dataset.
  """
  try:
    return tfds.builder(config.dataset, data_dir=config.data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    close = difflib.get_close_matches(config.dataset, tfds.list_builders(), n=3)
    raise UserError(f'config.dataset={config.dataset!r} is not a TFDS dataset' + (
        f'; did you mean {close}?' if close else '; see tfds.list_builders()')) from None


def check(dataset: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> None:
  """Checks that an unprepared dataset can be built as the config says, in a second or so.

  Raises:
    UserError: no manual_dir and no download allowed, or a manual_dir that
      lacks the dataset's original files.
  """
  if dataset.is_prepared():
    return
  name = dataset.info.name
  if config.manual_dir:
    if not os.path.isdir(config.manual_dir):
      raise UserError(f'config.manual_dir={config.manual_dir!r} is not a directory')
    check_manual_dir(dataset, config.manual_dir)
  elif not config.download:
    raise UserError(
        f'dataset {name!r} is not prepared in {dataset.data_dir} and this run may not download; '
        f'pass --config.manual_dir=DIR with its original files (e.g. ../shared/data/{name}), '
        '--config.data_dir=DIR where it is prepared, or --config.download=True')


def check_manual_dir(dataset: tfds.core.DatasetBuilder, manual_dir: str) -> None:
  """Checks that `manual_dir` holds each original file the builder reads, by size and SHA-256.

  A dataset without registered checksums is left to TFDS.

  Raises:
    UserError: one line naming each missing or wrong file, and what the folder holds.
  """
  try:
    infos = sorted(dataset.url_infos.items())
  except Exception:  # pylint: disable=broad-except  # No checksums registered for this builder.
    return
  problems = []
  for url, info in infos:
    name = info.filename or os.path.basename(url)
    path = os.path.join(manual_dir, name)
    if not os.path.isfile(path):
      problems.append(f'{name} is missing')
    elif os.path.getsize(path) != int(info.size):
      problems.append(f'{name} has {os.path.getsize(path)} bytes, not {int(info.size)}')
    else:
      with open(path, 'rb') as f:
        digest = hashlib.file_digest(f, 'sha256').hexdigest()
      if digest != info.checksum:
        problems.append(f'{name} has SHA-256 {digest[:12]}..., not {info.checksum[:12]}...')
  if problems:
    found = sorted(os.listdir(manual_dir))
    raise UserError(
        f'config.manual_dir={manual_dir!r} does not hold the original files of '
        f'{dataset.info.name!r}: {"; ".join(problems)} (the folder holds {found or "nothing"}; '
        f'{dataset.info.name!r} needs {[i.filename for _, i in infos]})')


def build(dataset: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> None:
  """Builds the dataset into data_dir if it is not there yet (this imports TensorFlow).

  From `config.manual_dir` (the dataset's original files, whose checksums TFDS
  verifies again) when given, else by download when `config.download` allows it.

  Raises:
    UserError: the data is missing and cannot be built offline, or the build failed.
  """
  check(dataset, config)
  if dataset.is_prepared():
    return
  name = dataset.info.name
  # TFDS names an extracted manual file after its file name alone, so in a shared
  # extract_dir MNIST and Fashion-MNIST (same file names) would reuse each
  # other's files. Extract into a fresh directory instead.
  with tempfile.TemporaryDirectory(prefix=f'tfds_extract_{name}_') as extract_dir:
    download_config = tfds.download.DownloadConfig(
        manual_dir=config.manual_dir, extract_dir=extract_dir,
        force_checksums_validation=bool(config.manual_dir), try_download_gcs=not config.manual_dir)
    try:
      dataset.download_and_prepare(download_config=download_config)
    except Exception as e:  # TFDS raises many kinds: network, checksum, missing file.
      raise UserError(f'could not build {name!r} into {dataset.data_dir}: {type(e).__name__}: ' +
                      str(e).strip().splitlines()[0]) from e


def image_info(dataset: tfds.core.DatasetBuilder) -> dict[str, Any]:
  """What models and plots need to know of an image classification dataset."""
  label = dataset.info.features['label']
  return {
      'num_classes': label.num_classes, 'class_names': list(label.names),
      'image_shape': list(dataset.info.features['image'].shape), 'image_dtype': np.dtype(
          dataset.info.features['image'].np_dtype).name, 'version': str(dataset.info.version)
  }


def check_image_classification(dataset: tfds.core.DatasetBuilder) -> None:
  """Raises UserError unless the dataset has 'image' and 'label' features."""
  features = dataset.info.features
  if 'image' not in features or 'label' not in features:
    raise UserError(f'config.dataset={dataset.info.name!r} has features {list(features)}; '
                    "an image classifier needs 'image' and 'label'")
