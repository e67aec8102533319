"""The fine-tuning recipe end to end: a tiny random PaliGemma 2 Hugging Face checkpoint is imported
by `experiments/finetune_demo_cpu.gin`, trained 20 steps on the demo mixture, checkpointed,
exported with `python -m medpalm.convert export`, and the export loads in transformers."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from tests.medpalm.test_convert_oracle import TEXT, _images, _pixel_values, _save
from tests.support import driver as driver_setup

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

SCRIPT = """
import pathlib, sys
from medpalm import convert, demo
from medpalm.driver import main as main_lib

out, hf = pathlib.Path(sys.argv[1]), sys.argv[2]
env = demo.prepare(out / "demo", num_examples=16)
demo.register_tasks(env)
bindings = [
    f"MODEL_DIR = '{out / 'run'}'",
    f"INITIAL_CHECKPOINT_PATH = '{hf}'",
    "MIXTURE_OR_TASK_MODULE = None",  # the demo registered its 56-pixel tasks already
    "BATCH_SIZE = 8",
    "TASK_FEATURE_LENGTHS = {'inputs': 256, 'targets': 8, 'images': 1, 'image_mask': 1}",
]
main_lib.main(
    ["--run_mode=train", "--gin_file=gin_configs/experiments/finetune_demo_cpu.gin"]
    + [f"--gin_bindings={b}" for b in bindings]
)
sys.exit(convert.main(["export", str(out / "run"), hf, str(out / "exported")]))
"""


def test_finetune_experiment_imports_trains_checkpoints_and_exports(tmp_path):
  text = dict(TEXT, vocab_size=1024, sliding_window=8)  # the demo vocabulary has 1001 ids
  config = transformers.PaliGemmaConfig(
      vision_config=dict(
          hidden_size=48,
          intermediate_size=96,
          num_hidden_layers=2,
          num_attention_heads=4,
          image_size=56,  # the demo's images
          patch_size=14,
      ),
      text_config=dict(text, model_type="gemma2", num_key_value_heads=2, num_hidden_layers=3),
      image_token_index=1023,
      projection_dim=TEXT["hidden_size"],
  )
  source = _save(transformers.PaliGemmaForConditionalGeneration(config), tmp_path / "hf")
  result = subprocess.run(
      [sys.executable, "-c", SCRIPT, str(tmp_path), str(tmp_path / "hf")],
      cwd=driver_setup.REPO,
      env=driver_setup.subprocess_env(),
      capture_output=True,
      text=True,
      timeout=1500,
  )
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  assert (tmp_path / "run" / "checkpoint_20" / "state").is_dir()

  exported = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
      tmp_path / "exported", dtype=torch.float32
  ).eval()
  before = dict(source.named_parameters())
  after = dict(exported.named_parameters())
  # medpalm keeps every patch token: SigLIP's MAP head is not imported, nor exported.
  assert set(after) == {n for n in before if ".vision_tower.head." not in n}
  # The ViT's patch embedding (its module path differs between transformers releases).
  (name,) = [n for n in before if n.endswith("embeddings.patch_embedding.weight")]
  old, new = before[name].detach().numpy().ravel(), after[name].detach().numpy().ravel()
  assert not np.array_equal(old, new)  # trained ...
  assert np.corrcoef(old, new)[0, 1] > 0.9  # ... starting from the imported weights
  tokens = np.full((1, 20), 5, np.int64)
  tokens[0, :16] = exported.config.image_token_id
  with torch.no_grad():
    logits = exported(
        input_ids=torch.tensor(tokens), pixel_values=_pixel_values(_images(1, 56))
    ).logits
  assert logits.shape == (1, 20, 1024) and torch.isfinite(logits).all()
