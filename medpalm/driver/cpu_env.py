"""Process settings for training on a CPU: XLA:CPU flags, glibc's allocator, and a description.

    from medpalm.driver import cpu_env
    cpu_env.configure()          # before the first JAX computation (the driver and demo do this)
    print(cpu_env.describe())    # ISA, XLA_FLAGS, threads, allocator: one line for logs

XLA reads `XLA_FLAGS` once, when its CPU backend starts, so `configure` must run before that
(importing jax is fine; creating an array is not). It only adds to what is there: a flag already
in `XLA_FLAGS` keeps its value, and `MEDPALM_CPU_ENV=off` skips everything. Nothing here changes
a TPU or GPU run: with `JAX_PLATFORMS` naming no `cpu`, `configure` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# Flags added to XLA_FLAGS on a CPU run (each measured by `benchmarks/xla_flags.py`; see
# docs/PERFORMANCE.md for what was tried and kept). Empty where XLA's defaults were the fastest.
DEFAULT_XLA_FLAGS: tuple[str, ...] = ()

# glibc mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
_retained = False


def retain_freed_memory() -> bool:
  """Makes glibc keep freed memory in the process instead of returning it to the kernel.

  XLA:CPU allocates a step's scratch space (1.5-3 GiB for the MFU benchmark's step) with one
  malloc per execution. glibc serves it from a fresh mmap and unmaps it on free, so the kernel
  zero-fills and page-faults every 4 KiB page of it again on each step (~17 % of the step's
  CPU time in a `perf` profile). One heap arena, no mmap, and a 2 GiB trim threshold make the
  next step reuse the same pages. Call before JAX starts its threads; returns False where libc
  has no mallopt (not glibc).
  """
  global _retained
  libc = ctypes.CDLL(ctypes.util.find_library("c"))
  if not hasattr(libc, "mallopt"):
    return False
  keep = 2**31 - 1
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, keep), (_M_TOP_PAD, keep))
  _retained = all(libc.mallopt(option, value) == 1 for option, value in settings)
  return _retained


def _flag_name(flag: str) -> str:
  return flag.split("=", 1)[0]


def merge_flags(existing: str, defaults) -> str:
  """`existing` XLA_FLAGS plus each default whose flag name `existing` does not set already."""
  present = {_flag_name(f) for f in existing.split()}
  added = [f for f in defaults if _flag_name(f) not in present]
  return " ".join([*existing.split(), *added])


def is_cpu_run(environ=os.environ) -> bool:
  """True unless JAX_PLATFORMS is set and names no `cpu` (a TPU / GPU run)."""
  platforms = environ.get("JAX_PLATFORMS", "")
  return not platforms or "cpu" in platforms.split(",")


def configure(environ=os.environ, allocator: bool = True) -> bool:
  """Adds DEFAULT_XLA_FLAGS to `environ["XLA_FLAGS"]` and (with `allocator`) retains freed
  memory, on a CPU run. Returns whether it did anything (False: not CPU, or switched off)."""
  if environ.get("MEDPALM_CPU_ENV", "").lower() == "off" or not is_cpu_run(environ):
    return False
  environ["XLA_FLAGS"] = merge_flags(environ.get("XLA_FLAGS", ""), DEFAULT_XLA_FLAGS)
  if allocator:
    retain_freed_memory()
  return True


def _cpuinfo(field: str, path: str = "/proc/cpuinfo") -> str | None:
  """The value of `field` for the first processor in `path` (None where unreadable or absent)."""
  try:
    with open(path) as f:
      for line in f:
        name, sep, value = line.partition(":")
        if sep and name.strip() == field:
          return value.strip()
  except OSError:
    pass
  return None


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
  """The CPU feature flags of the first processor in `path` (empty where it is unreadable)."""
  return set((_cpuinfo("flags", path) or "").split())


def cpu_model(path: str = "/proc/cpuinfo") -> tuple[str, int | None]:
  """(vendor_id, cpu family) of the first processor: ("AuthenticAMD", 26) on AMD Zen 5."""
  family = _cpuinfo("cpu family", path)
  return _cpuinfo("vendor_id", path) or "", int(family) if family and family.isdigit() else None


def detected_isa(flags=None) -> str:
  """The widest vector ISA of this CPU in XLA's `--xla_cpu_max_isa` names (x86 only)."""
  flags = cpu_flags() if flags is None else flags
  for name, needs in (
      ("AVX512", {"avx512f", "avx512bw", "avx512vl", "avx512dq"}),
      ("AVX2", {"avx2", "fma"}),
      ("AVX", {"avx"}),
      ("SSE4_2", {"sse4_2"}),
  ):
    if needs <= flags:
      return name
  return "unknown"


ORDER = ("SSE4_2", "AVX", "AVX2", "AVX512")


def effective_isa(environ=os.environ, flags=None) -> str:
  """The ISA XLA:CPU generates code for: the detected one, capped by `--xla_cpu_max_isa`."""
  isa = detected_isa(flags)
  for flag in environ.get("XLA_FLAGS", "").split():
    if _flag_name(flag) == "--xla_cpu_max_isa" and "=" in flag:
      cap = flag.split("=", 1)[1].upper()
      cap = "AVX512" if cap.startswith("AVX512") or cap.startswith("AMX") else cap
      if isa in ORDER and cap in ORDER and ORDER.index(cap) < ORDER.index(isa):
        return cap
  return isa


def peak_flops_per_cycle(isa: str, dtype_bytes: int = 4, model=None) -> int:
  """Nominal FLOPs per cycle per core: 2 FMA pipes × lanes × 2 (multiply + add).

  AVX2: 256-bit vectors, 8 float32 lanes -> 32. AVX-512: 16 lanes -> 64 where the core has
  full-width 512-bit FMA units (Intel server cores, AMD Zen 5 = family 26); AMD Zen 4
  (family 25) runs each 512-bit FMA as two 256-bit halves, so 32 there. ``model``:
  `cpu_model()`'s (vendor, family), read from this machine by default."""
  if isa == "AVX512":
    vendor, family = cpu_model() if model is None else model
    half_width = vendor == "AuthenticAMD" and (family or 0) < 26
    return (32 if half_width else 64) * 4 // dtype_bytes
  lanes = {"AVX2": 32, "AVX": 16, "SSE4_2": 8}.get(isa, 8)
  return lanes * 4 // dtype_bytes


def cpu_mhz(path: str = "/proc/cpuinfo") -> float | None:
  """The clock /proc/cpuinfo reports for the first processor (MHz), or None."""
  try:
    return float(_cpuinfo("cpu MHz", path))
  except (TypeError, ValueError):
    return None


def cores() -> int:
  """CPU cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def nominal_peak(isa: str, dtype_bytes: int = 4) -> float | None:
  """Nominal physical peak FLOP/s: cores × clock × FLOPs/cycle (None without a clock)."""
  mhz = cpu_mhz()
  return None if mhz is None else cores() * mhz * 1e6 * peak_flops_per_cycle(isa, dtype_bytes)


def describe(environ=os.environ) -> str:
  """One line: the CPU, its ISA and the one XLA uses, cores, XLA_FLAGS, thread settings."""
  model = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), model)
  except OSError:
    pass
  threads = {
      k: environ[k]
      for k in ("OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY", "MALLOC_ARENA_MAX")
      if k in environ
  }
  return (
      f"CPU: {model}, {cores()} cores at {cpu_mhz() or float('nan'):.0f} MHz; ISA detected "
      f"{detected_isa()}, XLA uses {effective_isa(environ)}; "
      f"XLA_FLAGS={environ.get('XLA_FLAGS', '')!r}; threads {threads or 'default'}; "
      f"{'freed memory retained' if _retained else 'glibc malloc as it comes'}"
  )
