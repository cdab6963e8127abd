"""The accelerators `--compile_for` knows: their published per-chip figures, and JAX's description of their devices."""
import dataclasses
import os
from typing import Any

import jax

from lib.errors import UserError

GIB = 2**30
_CLOUD_TPU = 'cloud.google.com/tpu/docs/{} (per chip)'


@dataclasses.dataclass(frozen=True)
class Target:
  """An accelerator by the name users know, and its published per-device figures.

  Attributes:
    name: e.g. 'v5e-8'.
    description: chips and hosts, in words.
    platform: 'tpu' or 'cuda'.
    topology: keyword arguments of jax.experimental.topologies.get_topology_desc.
    hbm: bytes of HBM per JAX device.
    peak_flops: dense bfloat16 FLOP/s per device. JAX's default precision runs
      float32 matmuls as bfloat16 passes on a TPU and as TF32 on an A100 or
      H100, so this bounds float32 too except on GPUs (`f32_flops`).
    f32_flops: float32 matmul FLOP/s per device at JAX's default precision.
    hbm_bandwidth: bytes/s per device.
    source: where the figures come from.
  """
  name: str
  description: str
  platform: str
  topology: dict[str, Any]
  hbm: float
  peak_flops: float
  f32_flops: float
  hbm_bandwidth: float
  source: str


def _tpu(name: str, description: str, topology: str, hbm_gib: float, tflops: float, gbps: float,
         source: str, **kwargs: Any) -> Target:
  return Target(name, description, 'tpu', dict(topology_name=topology, **kwargs), hbm_gib * GIB,
                tflops * 1e12, tflops * 1e12, gbps * 1e9, source)


# v2 and v3 chips are two devices each (one per TensorCore): their figures are halved.
TARGETS = {
    t.name: t for t in (
        _tpu('v5e-1', 'TPU v5e, 1 chip (Colab)', 'v5e:1x1', 16, 197, 819, _CLOUD_TPU.format('v5e'),
             chips_per_host_bounds=(1, 1, 1)),
        _tpu('v2-8', 'TPU v2, 4 chips = 8 devices (Colab)', 'v2:2x2', 8, 23, 350,
             'Jouppi et al., CACM 2020, Table 3 (46 TFLOP/s, 16 GiB, 700 GB/s a chip)'),
        _tpu('v3-8', 'TPU v3, 4 chips = 8 devices (Colab)', 'v3:2x2', 16, 61.5, 450,
             _CLOUD_TPU.format('v3') + ', halved: 2 devices a chip'),
        _tpu('v4-8', 'TPU v4, 4 chips (megacore: a device a chip)', 'v4:2x2x1', 32, 275, 1200,
             _CLOUD_TPU.format('v4'), chip_config_name='megacore'),
        _tpu('v5e-8', 'TPU v5e, 8 chips, 1 host', 'v5e:2x4', 16, 197, 819, _CLOUD_TPU.format('v5e'),
             chips_per_host_bounds=(2, 4, 1)),
        _tpu('v5e-16', 'TPU v5e, 16 chips on 4 hosts', 'v5e:4x4', 16, 197, 819,
             _CLOUD_TPU.format('v5e')),
        _tpu('v5e-256', 'TPU v5e pod, 256 chips on 64 hosts', 'v5e:16x16', 16, 197, 819,
             _CLOUD_TPU.format('v5e')),
        _tpu('v5p-8', 'TPU v5p, 4 chips', 'v5p:2x2x1', 95, 459, 2765, _CLOUD_TPU.format('v5p')),
        _tpu('v6e-1', 'TPU v6e (Trillium), 1 chip', 'v6e:1x1', 32, 918, 1640,
             _CLOUD_TPU.format('v6e'), chips_per_host_bounds=(1, 1, 1)),
        _tpu('v6e-8', 'TPU v6e (Trillium), 8 chips, 1 host', 'v6e:2x4', 32, 918, 1640,
             _CLOUD_TPU.format('v6e'), chips_per_host_bounds=(2, 4, 1)),
        Target('a100', 'NVIDIA A100 SXM4 40GB (Colab)', 'cuda', {'topology': '1x1x1'}, 40 *
               GIB, 312e12, 156e12, 1555e9, 'NVIDIA A100 datasheet (dense; float32 as TF32)'),
        Target('h100', 'NVIDIA H100 SXM 80GB', 'cuda', {'topology': '1x1x1'}, 80 *
               GIB, 989e12, 495e12, 3350e9, 'NVIDIA H100 datasheet (SXM, dense; float32 as TF32)'),
        Target('h100x8', 'NVIDIA H100 SXM 80GB x 8, 1 host', 'cuda', {'topology': '1x1x8'}, 80 *
               GIB, 989e12, 495e12, 3350e9, 'NVIDIA H100 datasheet (SXM, dense; float32 as TF32)'),
    )
}

# What XLA's GPU compiler needs to know of a GPU it cannot see (its GpuTargetConfigProto),
# from NVIDIA's published figures: SMs, memory, bandwidth, L2, boost clock, compute
# capability, and the per-SM limits of that capability.
_GPU_SPECS = {
    'a100': dict(name='NVIDIA A100-SXM4-40GB', sms=108, memory=40 * GIB, bandwidth=1555e9,
                 l2=40 * 2**20, clock_ghz=1.41, cc=(8, 0), smem_per_sm=164 * 1024,
                 smem_optin=163 * 1024, fp32_per_sm=64),
    'h100': dict(name='NVIDIA H100 80GB HBM3', sms=132, memory=80 * GIB, bandwidth=3350e9,
                 l2=50 * 2**20, clock_ghz=1.98, cc=(9, 0), smem_per_sm=228 * 1024,
                 smem_optin=227 * 1024, fp32_per_sm=128),
}


def _gpu_target_config(name: str) -> str:
  spec = _GPU_SPECS[name.removesuffix('x8')]
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {spec['smem_per_sm']}
  shared_memory_per_block_optin: {spec['smem_optin']}
  threads_per_core_limit: 2048
  core_count: {spec['sms']}
  fpus_per_core: {spec['fp32_per_sm']}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(spec['bandwidth'])}
  l2_cache_size: {spec['l2']}
  clock_rate_ghz: {spec['clock_ghz']}
  device_memory_size: {spec['memory']}
  cuda_compute_capability {{ major: {spec['cc'][0]} minor: {spec['cc'][1]} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  thread_dim_limit_x: 1024
  thread_dim_limit_y: 1024
  thread_dim_limit_z: 64
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
device_description_str: "{spec['name']}"
"""


def target(name: str) -> Target:
  """The Target called `name`.

  Raises:
    UserError: an unknown name, listing the known ones.
  """
  if name not in TARGETS:
    raise UserError(f'--compile_for={name} is unknown; choose one of {list(TARGETS)}')
  return TARGETS[name]


def detect(found: list[jax.Device] | None = None) -> str | None:
  """The name in TARGETS of the accelerator JAX runs on here (jax.devices()), or None.

  None on a CPU, or on a chip or count that TARGETS does not name.
  """
  found = jax.devices() if found is None else found
  kind, count = found[0].device_kind, len(found)
  names = {
      'TPU v2': f'v2-{count}', 'TPU v3': f'v3-{count}', 'TPU v4': f'v4-{2 * count}',
      'TPU v5 lite': f'v5e-{count}', 'TPU v5': f'v5p-{2 * count}', 'TPU v6 lite': f'v6e-{count}'
  }
  if kind in names:
    name = names[kind]
  elif 'A100' in kind:
    name = 'a100'
  elif 'H100' in kind:
    name = 'h100' if count == 1 else f'h100x{count}'
  else:
    return None
  return name if name in TARGETS else None


def devices(t: Target) -> list[jax.Device]:
  """The target's devices, described by JAX without the hardware.

  Raises:
    UserError: the compiler for the target's platform is not installed.
  """
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  kwargs = dict(t.topology)
  if t.platform == 'cuda':
    kwargs['target_config'] = _gpu_target_config(t.name)
  else:
    # libtpu's lock keeps a second process off a TPU; compiling opens none, so several
    # processes may compile at once (benchmarks/compiled.py's workers).
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  try:
    return list(topologies.get_topology_desc(platform=t.platform, **kwargs).devices)
  except Exception as e:  # pylint: disable=broad-except  # The plugin missing or not loading.
    package = 'libtpu' if t.platform == 'tpu' else 'jax-cuda12-plugin'
    raise UserError(f'--compile_for={t.name}: JAX could not describe the target '
                    f'({type(e).__name__}: {(str(e).strip().splitlines() or [""])[0][:200]}); '
                    f'its compiler ({package}) comes with requirements-compile.txt') from None
