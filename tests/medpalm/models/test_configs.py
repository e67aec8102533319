"""Parameter counts of every paper size, from eval_shape (nothing allocated)."""

import subprocess
import sys

import pytest

from medpalm.models import configs, medpalm_m

# PaLM Table 1 (decoders) and the ViT sizes; counts in parameters.
DECODER = {"12b": 8.63e9, "84b": 62.50e9, "562b": 540.35e9}
VISION = {"12b": ("ViT-e", 3.81e9), "84b": ("ViT-22B", 21.74e9), "562b": ("ViT-22B", 21.74e9)}


def analytic_vit(c):
  """Per layer 4·d² + 2·d·d_ff (+ biases / norms ignored), the formula the ViT papers quote."""
  return c.num_layers * (4 * c.d_model**2 + 2 * c.d_model * c.d_ff)


def analytic_palm(c):
  """PaLM: Q and O are d·(H·256), K and V d·256 (multi-query), SwiGLU 3·d·d_ff, one embedding."""
  attn = 2 * c.d_model * c.num_heads * c.head_dim + 2 * c.d_model * c.num_kv_heads * c.head_dim
  return c.num_layers * (attn + 3 * c.d_model * c.d_ff) + c.vocab_size * c.d_model


@pytest.mark.parametrize("name", ["12b", "84b", "562b"])
def test_parameter_counts_match_the_papers(name):
  config = configs.get_config(name)
  counts = medpalm_m.parameter_counts(config)
  assert counts["decoder"] == pytest.approx(DECODER[name], rel=0.005)
  assert counts["decoder"] == pytest.approx(analytic_palm(config.decoder), rel=1e-4)
  _, vit = VISION[name]
  assert counts["vision"] == pytest.approx(vit, rel=0.01)
  assert counts["vision"] == pytest.approx(analytic_vit(config.vision), rel=0.005)
  projector = config.vision.d_model * config.decoder.d_model + config.decoder.d_model
  assert counts["projector"] == projector
  assert counts["total"] == counts["decoder"] + counts["vision"] + projector


def test_562b_attention_is_narrower_than_d_model():
  c = configs.get_config("562b").decoder
  assert (c.num_heads * c.head_dim, c.d_model) == (12288, 18432)


def test_summary_prints_one_line_per_config():
  out = subprocess.run(
      [sys.executable, "-m", "medpalm.models", "--summary"],
      check=True,
      capture_output=True,
      text=True,
  ).stdout.splitlines()
  assert [line.split()[0] for line in out] == list(configs.CONFIGS)
  fields = dict(kv.split("=") for kv in out[1].split()[1:])
  assert out[1].startswith("12b ") and set(fields) == {"decoder", "vision", "total"}
  assert int(fields["decoder"]) == medpalm_m.parameter_counts(configs.get_config("12b"))["decoder"]


def test_unknown_config_name_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown config 'palm-9000'.*tiny, 12b"):
    configs.get_config("palm-9000")


def test_runtime_switches_apply_to_both_towers():
  c = configs.get_config("tiny", dtype="bfloat16", scan_layers=False, remat_policy="full")
  assert (c.vision.dtype, c.decoder.dtype) == ("bfloat16", "bfloat16")
  assert not c.vision.scan_layers and c.decoder.remat_policy == "full"
  with pytest.raises(ValueError, match="remat_policy"):
    configs.get_config("tiny", remat_policy="sometimes")
