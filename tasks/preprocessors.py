"""TensorFlow side of the prompt: tokenize segments, budget the length, insert image placeholders.

A task's source yields, per example (see tasks.multimedbench):

  id          string[]     stable record id
  query       string[Q]    the query's segments (tasks.prompts roles, static per task)
  exemplars   int32[K]     rows of the task's exemplar table, -1 for "none"
  targets     string[]     answer + "."
  images      uint8[1, H, W, 3], image_mask bool[1]

`make_prompt_preprocessor` turns that into the model's token features. Length budgeting works on
token counts of the segments and is a pure function of them (so a resumed pipeline reproduces it):

  1. drop exemplars, the first (farthest from the query) first, until the prompt fits;
  2. shorten CONTEXT segments from the middle, longest first ("water filling": the longest is cut
     down to the next longest, then both together, ...);
  3. only if still too long: shorten the instruction from the middle, then the query text;
  the image placeholders and the answer cue are never cut.

What budgeting did is returned per example as int32 scalars ``budget_exemplars_dropped`` and
``budget_{context,instruction,query}_cut`` (tokens removed); `budget_summary` adds them up.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from tasks.prompts import Role

TARGET_PREFIX = " "  # the target continues the cue "A:" the way exemplar answers do ("A: No.")
BUDGET_FEATURES = (
    "budget_exemplars_dropped",
    "budget_context_cut",
    "budget_instruction_cut",
    "budget_query_cut",
)


def water_fill(lengths: tf.Tensor, reduce_by: tf.Tensor) -> tf.Tensor:
  """int32[n] lengths → int32[n] shortened by ``reduce_by`` in total (or to zero), cutting
  the longest first: the result is min(length, level) with the highest level that fits, the
  remaining slack handed back one token each to the segments cut at that level.
  """
  lengths = tf.cast(lengths, tf.int32)
  reduce_by = tf.maximum(tf.cast(reduce_by, tf.int32), 0)
  target = tf.maximum(tf.reduce_sum(lengths) - reduce_by, 0)
  levels = tf.range(tf.reduce_max(tf.concat([lengths, [0]], 0)) + 1)  # [M]
  sums = tf.reduce_sum(tf.minimum(lengths[tf.newaxis, :], levels[:, tf.newaxis]), axis=1)
  level = tf.reduce_max(tf.where(sums <= target, levels, 0))
  base = tf.minimum(lengths, level)
  slack = target - tf.reduce_sum(base)
  above = lengths > level
  rank = tf.cumsum(tf.cast(above, tf.int32), exclusive=True)
  return base + tf.cast(above & (rank < slack), tf.int32)


def budget_lengths(
    lengths: tf.Tensor, roles: Sequence[Role], budget: int
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """int32[S] token counts of segments with static ``roles`` → (int32[S] kept counts, stats).

  ``lengths`` must count IMAGE segments as 0 (their placeholders are outside the text budget)
  and CUE segments are never shortened.
  """
  lengths = tf.cast(lengths, tf.int32)
  idx = {role: [i for i, r in enumerate(roles) if r == role] for role in Role}
  over = tf.reduce_sum(lengths) - budget
  new = lengths
  stats = {name: tf.constant(0, tf.int32) for name in BUDGET_FEATURES}

  def update(positions, values):
    return tf.tensor_scatter_nd_update(new, [[i] for i in positions], values)

  if idx[Role.EXEMPLAR]:
    old = tf.gather(new, idx[Role.EXEMPLAR])
    drop = tf.cumsum(old, exclusive=True) < over
    kept = tf.where(drop, 0, old)
    new = update(idx[Role.EXEMPLAR], kept)
    over -= tf.reduce_sum(old - kept)
    stats["budget_exemplars_dropped"] = tf.reduce_sum(tf.cast(drop & (old > 0), tf.int32))
  for role, name in (
      (Role.CONTEXT, "budget_context_cut"),
      (Role.INSTRUCTION, "budget_instruction_cut"),
      (Role.QUERY, "budget_query_cut"),
  ):
    if not idx[role]:
      continue
    old = tf.gather(new, idx[role])
    kept = water_fill(old, over)
    new = update(idx[role], kept)
    cut = tf.reduce_sum(old - kept)
    over -= cut
    stats[name] = cut
  return new, stats


def keep_middle_out(tokens: tf.RaggedTensor, keep: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Ragged int32[S, (L_i)] → (int32[sum keep] kept tokens, int64[S + 1] row splits): the first
  ceil(k_i/2) and last floor(k_i/2) tokens of each row, i.e. each row shortened from the middle.
  Flat-value arithmetic instead of ragged ops keeps graph tracing cheap."""
  values = tokens.flat_values
  starts = tokens.row_starts()
  rows = tokens.value_rowids()
  keep = tf.cast(keep, tf.int64)
  pos = tf.range(tf.size(values, out_type=tf.int64)) - tf.gather(starts, rows)
  head = tf.gather((keep + 1) // 2, rows)
  tail_from = tf.gather(tokens.row_lengths() - keep // 2, rows)
  kept = tf.boolean_mask(values, (pos < head) | (pos >= tail_from))
  return kept, tf.concat([[0], tf.cumsum(keep)], axis=0)


@dataclasses.dataclass(frozen=True)
class _Constants:
  """Per-task text that does not change between examples, tokenized once in Python."""

  instruction: str
  instruction_ids: np.ndarray  # int32[Li]
  exemplar_texts: np.ndarray  # object[P + 1]; the last row "" means "no exemplar"
  exemplar_ids: np.ndarray  # int32[sum of lengths]
  exemplar_lengths: np.ndarray  # int64[P + 1]

  @classmethod
  def build(cls, vocabulary, instruction: str, exemplar_texts: Sequence[str]) -> "_Constants":
    texts = list(exemplar_texts) + [""]
    ids = [vocabulary.encode(t) for t in texts]
    return cls(
        instruction,
        np.asarray(vocabulary.encode(instruction), np.int32),
        np.asarray(texts, dtype=object),
        np.asarray([i for row in ids for i in row], np.int32),
        np.asarray([len(row) for row in ids], np.int64),
    )


@tf.autograph.experimental.do_not_convert
def _prompt_features(
    ex: Mapping[str, tf.Tensor],
    *,
    vocabulary: seqio.Vocabulary,
    constants: _Constants,
    query_roles: Sequence[Role],
    num_shots: int,
    num_image_tokens: int,
    input_length: int | None,
    image_room: int,
    placeholder_id: int,
) -> dict[str, tf.Tensor]:
  texts, tokens, roles = [], [], []
  if constants.instruction:
    texts.append(tf.constant([constants.instruction]))
    tokens.append(
        tf.RaggedTensor.from_row_lengths(
            constants.instruction_ids, [len(constants.instruction_ids)]
        )
    )
    roles.append(Role.INSTRUCTION)
  if num_shots:
    rows = tf.where(ex["exemplars"] < 0, len(constants.exemplar_texts) - 1, ex["exemplars"])
    texts.append(tf.gather(tf.constant(constants.exemplar_texts, tf.string), rows))
    table = tf.RaggedTensor.from_row_lengths(constants.exemplar_ids, constants.exemplar_lengths)
    tokens.append(tf.gather(table, rows))
    roles += [Role.EXEMPLAR] * num_shots
  texts.append(ex["query"])
  tokens.append(tf.cast(vocabulary.encode_tf(ex["query"]), tf.int32))
  roles += list(query_roles)
  text = tf.concat(texts, axis=0)  # string[S]
  tokens = tf.concat([t.with_row_splits_dtype(tf.int64) for t in tokens], axis=0)  # [S, (L)]
  lengths = tf.cast(tokens.row_lengths(), tf.int32)
  is_image = [r == Role.IMAGE for r in roles]
  lengths = tf.where(tf.constant(is_image), 0, lengths)
  if input_length is None:  # no budget (e.g. seqio eval with sequence_length=None)
    kept_len, stats = lengths, {n: tf.constant(0, tf.int32) for n in BUDGET_FEATURES}
  else:
    kept_len, stats = budget_lengths(lengths, roles, input_length - image_room)
  kept, splits = keep_middle_out(tokens, kept_len)
  parts = []
  for i, image in enumerate(is_image):
    parts.append(
        tf.fill([num_image_tokens], tf.constant(placeholder_id, tf.int32))
        if image
        else kept[splits[i] : splits[i + 1]]
    )
  out = {
      "id": ex["id"],
      "inputs": tf.concat(parts, axis=0),
      "targets": tf.cast(
          vocabulary.encode_tf(tf.strings.join([TARGET_PREFIX, ex["targets"]])), tf.int32
      ),
      "inputs_pretokenized": tf.strings.reduce_join(text),
      "targets_pretokenized": ex["targets"],
      "images": ex["images"],
      "image_mask": ex["image_mask"],
  }
  out.update(stats)
  if "task_name" in ex:
    out["task_name"] = ex["task_name"]
  return out


def make_prompt_preprocessor(
    *,
    instruction: str,
    exemplar_texts: Sequence[str],
    query_roles: Sequence[Role],
    num_shots: int,
    num_image_tokens: int,
):
  """A seqio preprocessor ``fn(ds, sequence_length, output_features)`` for one task.

  ``exemplar_texts`` is the task's exemplar table (rendered training records; ``exemplars``
  indexes it). The instruction and the table are tokenized once, in Python; only the query and
  the target are tokenized per example. Text is budgeted to ``sequence_length["inputs"] -
  num_image_tokens`` tokens for every task (the reserved image room is constant), so inputs
  never exceed ``sequence_length["inputs"]``; a query with several images (two-view reports)
  reserves ``num_image_tokens`` per image, each image's placeholders where its ``<img>`` is.
  """
  roles = tuple(Role(r) for r in query_roles)
  image_room = num_image_tokens * max(1, sum(r == Role.IMAGE for r in roles))

  def preprocessor(ds, sequence_length=None, output_features=None):
    vocabulary = output_features["inputs"].vocabulary
    length = None if not sequence_length else sequence_length.get("inputs")
    if length is not None and length <= image_room:
      raise ValueError(
          f"sequence_length['inputs']={length} leaves no room for text next to "
          f"{image_room} image tokens"
      )
    fn = functools.partial(
        _prompt_features,
        vocabulary=vocabulary,
        constants=_Constants.build(vocabulary, instruction, exemplar_texts),
        query_roles=roles,
        num_shots=num_shots,
        num_image_tokens=num_image_tokens,
        input_length=length,
        image_room=image_room,
        placeholder_id=vocabulary.image_placeholder_id,
    )
    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)

  return preprocessor


def budget_summary(examples) -> dict[str, int]:
  """Totals of the budget counters over an iterable of examples (numpy or tensors), plus
  ``examples`` and ``examples_budgeted`` (examples where anything was dropped or cut)."""
  totals = {name: 0 for name in BUDGET_FEATURES}
  totals["examples"] = totals["examples_budgeted"] = 0
  for ex in examples:
    values = {name: int(np.asarray(ex[name])) for name in BUDGET_FEATURES}
    for name, v in values.items():
      totals[name] += v
    totals["examples"] += 1
    totals["examples_budgeted"] += int(any(values.values()))
  return totals
