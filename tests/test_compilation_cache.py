"""The launcher's persistent compilation cache: a rerun loads its programs and gives the same numbers."""
import os

from lib import compilation_cache
from tests.conftest import read_results, run_cli


def _programs(folder):
  """{program file: when it was written}; a program loaded again is not written again."""
  return {
      name: os.stat(os.path.join(folder, name)).st_mtime_ns
      for name in os.listdir(folder)
      if name.endswith('-cache')
  }


def test_a_rerun_loads_every_program_it_compiled_and_ends_with_the_same_numbers(tmp_path):
  cache = tmp_path / 'xla'
  env = {'JAX_COMPILATION_CACHE_DIR': str(cache)}
  first = run_cli('--config=configs/mnist1d.py:tiny', f'--workdir={tmp_path / "a"}', env=env)
  assert first.returncode == 0, first.stderr[-2000:]
  programs = _programs(cache)
  # Init, the train and eval steps and more: none left out for compiling in under a second.
  assert len(programs) >= 4
  second = run_cli('--config=configs/mnist1d.py:tiny', f'--workdir={tmp_path / "b"}', env=env)
  assert second.returncode == 0, second.stderr[-2000:]
  assert _programs(cache) == programs  # Nothing compiled anew: each program came from the cache.
  a, b = read_results(tmp_path / 'a'), read_results(tmp_path / 'b')
  assert a['test_accuracy'] == b['test_accuracy'] and a['history'] == b['history']


def test_the_cache_is_off_where_the_user_turns_it_off(tmp_path):
  env = {
      'JAX_ENABLE_COMPILATION_CACHE': 'false', 'JAX_COMPILATION_CACHE_DIR': '',
      'JAXNOTES_CACHE': str(tmp_path / 'cache')
  }
  done = run_cli('--config=configs/celsius.py:tiny', f'--workdir={tmp_path / "run"}', env=env)
  assert done.returncode == 0, done.stderr[-2000:]
  assert not (tmp_path / 'cache').exists()


def test_by_default_the_cache_is_a_folder_per_cpu_under_jaxnotes_cache(tmp_path):
  env = {'JAX_COMPILATION_CACHE_DIR': '', 'JAXNOTES_CACHE': str(tmp_path / 'cache')}
  done = run_cli('--config=configs/celsius.py:tiny', f'--workdir={tmp_path / "run"}', env=env)
  assert done.returncode == 0, done.stderr[-2000:]
  folder = tmp_path / 'cache' / f'xla-{compilation_cache._machine()}'  # pylint: disable=protected-access
  assert os.listdir(tmp_path / 'cache') == [folder.name] and _programs(folder)
