"""The model's feature converter: SeqIO task features -> the batches `MedPalmMModel` reads.

Task features (per example): `inputs int32[I]`, `targets int32[T]`, `images uint8[N, H, W, 3]`,
`image_mask bool[N]`. Model features (per batch, prefix-LM, never packed):
`decoder_input_tokens / decoder_target_tokens / decoder_causal_attention / decoder_loss_weights
int32[B, I + T]` and `images`, `image_mask` passed through.

This module is what `tasks` depends on in medpalm (and nothing else): the tasks produce the
features, the model owns the converter (T5X's `FEATURE_CONVERTER_CLS`). It imports SeqIO, hence
TensorFlow; `medpalm.model` reaches it only when the converter is asked for.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np
import seqio

IMAGE_FEATURES = {
    "images": seqio.FeatureConverter.FeatureSpec(dtype=np.uint8, rank=4),  # [N, H, W, 3]
    "image_mask": seqio.FeatureConverter.FeatureSpec(dtype=bool, rank=1),  # [N]
}


class MultimodalDecoderFeatureConverter(seqio.DecoderFeatureConverter):
  """Prefix-LM `DecoderFeatureConverter` that passes `images` / `image_mask` through.

  Constructible as T5X calls it (`FEATURE_CONVERTER_CLS(pack=False)`); packing is refused
  because images cannot be packed.
  """

  def __init__(
      self,
      pack: bool = False,
      use_custom_packing_ops: bool = False,
      apply_length_check: bool = True,
      bos_id: int = 0,
      passthrough_features: Mapping[str, Any] | None = None,
      loss_on_targets_only: bool = True,
  ):
    if pack:
      raise ValueError("MedPalmM batches cannot be packed (images do not pack): use pack=False")
    super().__init__(
        pack=False,
        use_custom_packing_ops=use_custom_packing_ops,
        apply_length_check=apply_length_check,
        bos_id=bos_id,
        passthrough_features=dict(passthrough_features or IMAGE_FEATURES),
        loss_on_targets_only=loss_on_targets_only,
    )


# --- what evaluation needs to know of a task ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """What medpalm's evaluation and inference read of a task beyond SeqIO's registry.

  result_name: the name results are reported under (e.g. `multimedbench_<task>` whatever prefix
    the task was registered with), so a test registration and the paper's tables line up.
  render_user_record: for tasks that accept user inputs (`--run_mode=infer` with a JSONL
    file), `fn(record, task_feature_lengths, feature_converter) -> {model feature: numpy}`: one
    user record (the reader's field names, e.g. {"question": ..., "image": [absolute paths]})
    rendered through the task's own prompt preprocessors and then `feature_converter` (the
    model's `FEATURE_CONVERTER_CLS(pack=False)`), so it is prompted exactly as training
    examples are. Raises ValueError naming a missing or bad field.
  rows_per_example: rows of an evaluation split per source example (a rank-classified task
    has one per class option, example by example; 1 otherwise), so the first N examples are
    the first N × rows_per_example rows.
  """

  result_name: str
  render_user_record: Callable[..., dict] | None = None
  rows_per_example: int = 1


_TASK_INFO: dict[str, TaskInfo] = {}


def register_task_info(
    task_name: str,
    *,
    result_name: str | None = None,
    render_user_record: Callable[..., dict] | None = None,
    rows_per_example: int = 1,
) -> None:
  """Called by the module that registers the SeqIO task (`tasks`), beside the registration."""
  _TASK_INFO[task_name] = TaskInfo(result_name or task_name, render_user_record, rows_per_example)


def task_info(task_name: str) -> TaskInfo:
  """The registered TaskInfo, or one with the task's own name."""
  return _TASK_INFO.get(task_name, TaskInfo(task_name))
