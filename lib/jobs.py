"""Jobs of a sweep as processes through submitit: worker processes on this machine, or a SLURM array.

A job is a picklable function and its arguments; each runs in a process of its
own, with its log beside it in `folder`. A job that fails is reported with its
log's path and does not stop the others.
"""
from collections.abc import Callable, Iterator, Sequence
import contextlib
import dataclasses
import os
import time
from typing import Any

LAUNCHERS = ('inline', 'local', 'slurm')


@dataclasses.dataclass(frozen=True)
class Job:
  """One job: its name (for the logs), the function and its arguments."""
  name: str
  fn: Callable[..., Any]
  args: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Failure:
  """A job that raised: its name, the last line of its error and its log."""
  name: str
  error: str
  log: str


@dataclasses.dataclass(frozen=True)
class Slurm:
  """What each job of a SLURM array asks for (sbatch's options of the same names).

  Attributes:
    partition: the partition ('' : the cluster's default).
    time_min: the job's time limit, in minutes.
    cpus_per_task: CPU cores per job.
    gpus_per_task: GPUs per job.
    parallelism: jobs of the array running at once (0: no limit).
  """
  partition: str = ''
  time_min: int = 60
  cpus_per_task: int = 2
  gpus_per_task: int = 0
  parallelism: int = 0


def _last_line(error: BaseException) -> str:
  """The job's own error in one line: the last line of the traceback submitit relays, if any."""
  text = str(error)
  parts = text.split('-' * 22)  # submitit frames the job's traceback with dashes.
  if len(parts) >= 3:
    text = parts[1]
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__


@contextlib.contextmanager
def _share(cpus: Sequence[int], gpus: Sequence[int]) -> Iterator[None]:
  """Processes started inside inherit `cpus` as their CPU affinity (XLA:CPU sizes its threads by
  it) and see only `gpus`."""
  before_cpus = os.sched_getaffinity(0)
  before_gpus = os.environ.get('CUDA_VISIBLE_DEVICES')
  os.sched_setaffinity(0, cpus)
  if gpus:
    os.environ['CUDA_VISIBLE_DEVICES'] = ','.join(map(str, gpus))
  try:
    yield
  finally:
    os.sched_setaffinity(0, before_cpus)
    if gpus and before_gpus is None:
      del os.environ['CUDA_VISIBLE_DEVICES']
    elif gpus:
      os.environ['CUDA_VISIBLE_DEVICES'] = before_gpus


def shares(workers: int, gpus: int = 0) -> list[tuple[list[int], list[int]]]:
  """Each worker's CPU cores (this process's, split evenly) and GPUs (`gpus` split evenly).

  Raises:
    ValueError: more workers than cores, or GPUs that do not split evenly.
  """
  cores = sorted(os.sched_getaffinity(0))
  if not 1 <= workers <= len(cores):
    raise ValueError(f'{workers} workers on {len(cores)} CPU cores: give each at least one')
  if gpus % workers:
    raise ValueError(f'{gpus} GPUs do not split evenly over {workers} workers')
  per_gpu = gpus // workers
  return [(cores[w::workers], list(range(w * per_gpu, (w + 1) * per_gpu))) for w in range(workers)]


def run_local(jobs: Sequence[Job], folder: str, workers: int, gpus: int = 0,
              poll_s: float = 0.5) -> list[Failure]:
  """Runs the jobs in worker processes on this machine, at most `workers` at once, each on its
  share of the cores and GPUs (`shares`). Returns the failures."""
  import submitit  # pylint: disable=g-import-not-at-top
  executor = submitit.LocalExecutor(folder)
  executor.update_parameters(timeout_min=7 * 24 * 60)
  free, waiting, running, failures = shares(workers, gpus), list(jobs), [], []
  while waiting or running:
    while waiting and free:
      job, share = waiting.pop(0), free.pop(0)
      with _share(*share):
        running.append((job, share, executor.submit(job.fn, *job.args)))
    time.sleep(poll_s)
    for entry in [r for r in running if r[2].done()]:
      running.remove(entry)
      job, share, handle = entry
      free.append(share)
      try:
        handle.result()
      except Exception as e:  # pylint: disable=broad-except  # Reported; the others go on.
        failures.append(Failure(job.name, _last_line(e), str(handle.paths.stderr)))
  return failures


def run_slurm(jobs: Sequence[Job], folder: str, slurm: Slurm) -> list[Failure]:
  """Submits the jobs as one SLURM job array and waits for it. Returns the failures."""
  import submitit  # pylint: disable=g-import-not-at-top
  executor = submitit.SlurmExecutor(folder)
  options = dict(time=slurm.time_min, cpus_per_task=slurm.cpus_per_task, ntasks_per_node=1,
                 array_parallelism=slurm.parallelism or len(jobs))
  if slurm.partition:
    options['partition'] = slurm.partition
  if slurm.gpus_per_task:
    options['gpus_per_node'] = slurm.gpus_per_task
  executor.update_parameters(**options)
  with executor.batch():
    handles = [executor.submit(job.fn, *job.args) for job in jobs]
  failures = []
  for job, handle in zip(jobs, handles):
    try:
      handle.result()
    except Exception as e:  # pylint: disable=broad-except  # Reported; the others go on.
      failures.append(Failure(job.name, _last_line(e), str(handle.paths.stderr)))
  return failures
