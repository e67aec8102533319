"""The benchmarks time the program that trains: the trainer's own step."""

import pathlib
import sys

import seqio

from medpalm.driver import trainer as trainer_lib
from medpalm.model import MedPalmMModel
from medpalm.models import configs
from medpalm.models.medpalm_m import MedPalmM

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import common  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


def test_benchmark_step_is_the_trainers_step():
  config = configs.get_config("tiny")
  model = MedPalmMModel(MedPalmM(config), seqio.PassThroughVocabulary(1024, 1))
  step = common.train_step(model)
  assert step.__wrapped__.__code__ is trainer_lib.make_train_step(model).__code__
  assert common.train_step_fn(config).__wrapped__.__code__ is step.__wrapped__.__code__


def test_matmul_flops_counts_every_trip_of_a_loop():
  """The layer scan's body runs once per layer; `cost_analysis` counts it once."""
  import jax
  import jax.numpy as jnp

  def stack(x, w):  # float32[8, 64] through 5 layers of [64, 32] @ [32, 64]
    return jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi[0]) @ wi[1], None), x, w)[0]

  x, w = jnp.ones((8, 64)), jnp.ones((5, 2, 64, 64))
  compiled = jax.jit(stack).lower(x, w).compile()
  assert common.matmul_flops(compiled) == 5 * 2 * (2 * 8 * 64 * 64)


def test_torch_cpu_attention_is_counted():
  """torch's FlopCounterMode counts its CPU flash-attention kernels, forward and backward, once
  they are given their GPU counterparts' formulas: 2·b·h·t·s·d FLOPs per matmul, QKᵀ and PV
  forward; the backward recomputes QKᵀ, then dV, dP, dQ and dK."""
  import torch
  import torch.utils.flop_counter

  import train_vs_transformers

  b, h, t, d = 2, 4, 64, 32
  q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))
  train_vs_transformers.count_cpu_attention(torch)
  with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
  assert counter.get_total_flops() == 2 * (2 * b * h * t * t * d)
  with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
    out.sum().backward()
  assert counter.get_total_flops() == 5 * (2 * b * h * t * t * d)
