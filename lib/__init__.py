"""jaxnotes' shared library: models, input pipeline, the training engine, checkpoints, plots."""
import os


def cache_dir() -> str:
  """The folder of what jaxnotes builds once per machine: $JAXNOTES_CACHE, else ~/.cache/jaxnotes."""
  return os.path.expanduser(os.environ.get('JAXNOTES_CACHE', '~/.cache/jaxnotes'))
