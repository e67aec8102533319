"""The XLA:CPU option sets `benchmarks/xla_flags.py` compares are options this XLA accepts."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import xla_flags  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


@pytest.mark.parametrize("name", list(xla_flags.CANDIDATES))
def test_each_option_set_compiles_and_computes_the_same(name):
  x = jnp.arange(64.0).reshape(8, 8) / 64
  f = lambda a: jax.nn.gelu(a @ a.T).sum(axis=0)
  compiled = jax.jit(f).lower(x).compile(compiler_options=xla_flags.CANDIDATES[name])
  assert jnp.allclose(compiled(x), f(x), rtol=1e-5, atol=1e-6)
  with pytest.raises(Exception, match="xla_cpu_no_such_option"):
    jax.jit(f).lower(x).compile(compiler_options={"xla_cpu_no_such_option": True})
