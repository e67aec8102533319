"""The CPU process settings: XLA flags merged, not overridden; ISA detection; peak arithmetic."""

import os
import subprocess
import sys

from medpalm.driver import cpu_env

AVX2 = {"sse4_2", "avx", "avx2", "fma"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


def test_merge_keeps_the_users_value_of_a_flag():
  merged = cpu_env.merge_flags("--a=1 --b=user", ("--b=ours", "--c=ours"))
  assert merged.split() == ["--a=1", "--b=user", "--c=ours"]
  assert cpu_env.merge_flags("", ()) == ""


def test_configure_adds_the_defaults_on_cpu_only(monkeypatch):
  monkeypatch.setattr(cpu_env, "DEFAULT_XLA_FLAGS", ("--xla_cpu_use_thunk_runtime=true",))
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  assert cpu_env.configure(env, allocator=False)
  assert env["XLA_FLAGS"].split() == [
      "--xla_force_host_platform_device_count=8",
      "--xla_cpu_use_thunk_runtime=true",
  ]
  tpu = {"JAX_PLATFORMS": "tpu"}
  assert not cpu_env.configure(tpu, allocator=False) and "XLA_FLAGS" not in tpu
  off = {"MEDPALM_CPU_ENV": "off"}
  assert not cpu_env.configure(off, allocator=False) and "XLA_FLAGS" not in off
  unset = {}
  assert cpu_env.configure(unset, allocator=False)
  assert unset["XLA_FLAGS"] == "--xla_cpu_use_thunk_runtime=true"


def test_isa_detection_and_the_max_isa_cap():
  assert cpu_env.detected_isa(AVX512) == "AVX512"
  assert cpu_env.detected_isa(AVX2) == "AVX2"
  assert cpu_env.detected_isa({"avx", "avx2"}) == "AVX"  # AVX2 without FMA: no 32 FLOP/cycle
  assert cpu_env.detected_isa(set()) == "unknown"
  capped = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_cpu_max_isa=avx2"}
  assert cpu_env.effective_isa(capped, AVX512) == "AVX2"
  assert cpu_env.effective_isa({"XLA_FLAGS": "--xla_cpu_max_isa=AVX512"}, AVX2) == "AVX2"
  assert cpu_env.effective_isa({}, AVX512) == "AVX512"


def test_nominal_flops_per_cycle():
  # 2 FMA pipes x 8 float32 lanes (256 bit) x 2 FLOPs; bfloat16 halves the element size.
  assert cpu_env.peak_flops_per_cycle("AVX2") == 32
  assert cpu_env.peak_flops_per_cycle("AVX2", dtype_bytes=2) == 64
  assert cpu_env.peak_flops_per_cycle("AVX") == 16
  # AVX-512: 16 lanes on full-width FMA units (Intel, AMD Zen 5), half-width on Zen 4.
  assert cpu_env.peak_flops_per_cycle("AVX512", model=("AuthenticAMD", 26)) == 64
  assert cpu_env.peak_flops_per_cycle("AVX512", model=("GenuineIntel", 6)) == 64
  assert cpu_env.peak_flops_per_cycle("AVX512", model=("AuthenticAMD", 25)) == 32


def test_cpuinfo_fields(tmp_path):
  info = tmp_path / "cpuinfo"
  info.write_text(
      "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\ncpu MHz\t\t: 2596.000\n"
      "flags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nvendor_id\t: Other\n"
  )
  assert cpu_env.cpu_model(str(info)) == ("AuthenticAMD", 26)
  assert cpu_env.cpu_mhz(str(info)) == 2596.0
  assert cpu_env.cpu_flags(str(info)) == {"fpu", "avx2", "fma"}
  assert cpu_env.cpu_model(str(tmp_path / "absent")) == ("", None)


def test_this_machine_is_described():
  line = cpu_env.describe({"XLA_FLAGS": "--xla_cpu_max_isa=AVX"})
  assert (
      f"ISA detected {cpu_env.detected_isa()}" in line
      and "XLA_FLAGS='--xla_cpu_max_isa=AVX'" in line
  )


def test_xla_accepts_the_default_flags_and_the_entry_points_set_them():
  """A misspelt flag makes XLA abort at start-up; the demo's import sets the flags."""
  code = (
      "import os; import medpalm.demo; import jax.numpy as jnp; "
      "print(float(jnp.ones(3).sum())); print(os.environ['XLA_FLAGS'])"
  )
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MEDPALM_CPU_ENV")}
  run = subprocess.run(
      [sys.executable, "-c", code],
      env={**env, "JAX_PLATFORMS": "cpu"},
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  out = run.stdout.splitlines()
  assert out[0] == "3.0"
  assert all(flag in out[1].split() for flag in cpu_env.DEFAULT_XLA_FLAGS)
