"""Vocabulary: a SentencePiece model plus one image-placeholder id that text can never produce.

The model input holds ``num_image_tokens`` copies of the placeholder id where the query's
``<img>`` stood; the model writes the image embeddings into those rows. The placeholder is the
first id past the SentencePiece pieces (``image_placeholder_id == piece count``), so no string
encodes to it, and ``vocab_size == piece count + 1``. Decoding turns each run of placeholders back
into the text ``<img>``, so ``decode(inputs)`` gives back the prompt.

Any SentencePiece model works (seqio's id layout: pad 0, eos 1; a Gemma ``tokenizer.model`` too).
Prompts round-trip exactly only with a *lossless* model (no dummy prefix, no whitespace folding,
identity normalisation, byte fallback) because prompt segments are tokenized separately and
concatenated — :func:`train_sentencepiece` trains such a model:

    python -m tasks.vocab --output /tmp/spm/medpalm --vocab_size 2000 [--data_dir $MEDPALM_DATA_DIR]

writes ``/tmp/spm/medpalm.model``; point ``MEDPALM_SPM_MODEL`` at it (the tasks' default).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pathlib
from typing import Iterable

import gin
import seqio
import tensorflow as tf

from tasks import prompts

SPM_ENV = "MEDPALM_SPM_MODEL"
IMAGE_TEXT = prompts.IMG


class MedPalmVocabulary(seqio.SentencePieceVocabulary):
  """seqio.SentencePieceVocabulary + ``image_placeholder_id`` (= number of SentencePiece pieces).

  ``sentencepiece_model_file=None`` resolves ``$MEDPALM_SPM_MODEL`` when first used, so that
  importing ``tasks`` never needs the file; a missing file raises FileNotFoundError saying how to
  make one.
  """

  def __init__(self, sentencepiece_model_file: str | None = None):
    super().__init__(sentencepiece_model_file or "", extra_ids=0)

  def _model_context(self):
    if self._model is None:
      path = self._sentencepiece_model_file or os.environ.get(SPM_ENV, "")
      if not path or not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"SentencePiece model {path or '(none)'} not found: set ${SPM_ENV} to a .model "
            "file (e.g. a Gemma tokenizer.model), or train a small one with "
            "`python -m tasks.vocab --output DIR/medpalm` and use DIR/medpalm.model"
        )
      self._sentencepiece_model_file = path
    return super()._model_context()

  @property
  def image_placeholder_id(self) -> int:
    """int: the id written ``num_image_tokens`` times where the query's image goes."""
    return self.tokenizer.GetPieceSize()

  @property
  def _base_vocab_size(self) -> int:
    # Pieces plus the placeholder; seqio's decode maps ids >= this to unk.
    return self.tokenizer.GetPieceSize() + 1

  @property
  def vocab_size(self) -> int:
    return self._base_vocab_size

  def _image_text_ids(self) -> list[int]:
    return self.tokenizer.EncodeAsIds(IMAGE_TEXT)

  def _decode(self, ids):
    """list[int] → str; each run of placeholder ids becomes the text ``<img>``."""
    ph, out, prev = self.image_placeholder_id, [], None
    for i in ids:
      i = int(i)
      if i == ph:
        if prev != ph:
          out.extend(self._image_text_ids())
      else:
        out.append(i)
      prev = i
    return self.tokenizer.DecodeIds(out)

  def _decode_tf(self, ids):
    """int32[..., T] → string[...]; same mapping as _decode, in TensorFlow."""
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank == 1:
      return self._decode_tf(ids[tf.newaxis])[0]
    ph = self.image_placeholder_id
    img = tf.constant(self._image_text_ids(), tf.int32)  # [L]
    n_img = int(img.shape[0])
    width = max(n_img, 1)
    is_ph = tf.equal(ids, ph)  # [B, T]
    prev_ph = tf.pad(is_ph[:, :-1], [[0, 0], [1, 0]])
    run_start = is_ph & ~prev_ph
    # Each position expands to `width` candidate ids, of which `count` are kept.
    own = tf.concat(
        [ids[..., tf.newaxis], tf.zeros(tf.concat([tf.shape(ids), [width - 1]], 0), ids.dtype)], -1
    )
    img_b = tf.broadcast_to(tf.pad(img, [[0, width - n_img]]), tf.shape(own))
    cand = tf.where(run_start[..., tf.newaxis], img_b, own)  # [B, T, W]
    count = tf.where(run_start, n_img, tf.where(is_ph, 0, 1))  # [B, T]
    keep = tf.range(width)[tf.newaxis, tf.newaxis] < count[..., tf.newaxis]
    batch = tf.shape(ids)[0]
    flat_cand = tf.reshape(cand, [batch, -1])
    flat_keep = tf.reshape(keep, [batch, -1])
    ragged = tf.ragged.boolean_mask(flat_cand, flat_keep)
    return self.tf_tokenizer.detokenize(ragged)

  def __str__(self) -> str:
    return f"Med{super().__str__()}"

  def __eq__(self, other) -> bool:
    """Equal when both hold the same SentencePiece model bytes (and extra ids).

    seqio compares vocabularies by their pickled state, which holds the model's path; the path
    of ``sentencepiece_model_file=None`` is filled in from ``$MEDPALM_SPM_MODEL`` only on first
    use, so two vocabularies of one file would compare unequal (T5X's "Model and Task
    vocabularies do not match") depending on which was used first. The model's content is what
    tokenizes, so it is what is compared.
    """
    if not isinstance(other, MedPalmVocabulary):
      return NotImplemented
    return self._extra_ids == other._extra_ids and self.sp_model == other.sp_model

  def __hash__(self) -> int:
    return hash((MedPalmVocabulary, self._extra_ids, hashlib.md5(self.sp_model).hexdigest()))


@gin.configurable
def get_vocabulary(sentencepiece_model_file: str | None = None) -> MedPalmVocabulary:
  """The tasks' vocabulary (``None``: ``$MEDPALM_SPM_MODEL``, resolved when first used).

  gin: ``VOCABULARY = @vocab.get_vocabulary()``, optionally
  ``vocab.get_vocabulary.sentencepiece_model_file = "/path/tokenizer.model"``. Registered tasks
  use the default (environment variable), so a run that binds a file here should point
  $MEDPALM_SPM_MODEL at the same file.
  """
  return MedPalmVocabulary(sentencepiece_model_file)


# --------------------------------------------------------------------------------------------
# Training a small lossless SentencePiece model (tests, demo)

_BUILTIN_TEXT = [
    t
    for t in (
        prompts.QA_INSTRUCTION,
        prompts.PUBMEDQA_INSTRUCTION,
        prompts.MIMIC_III_INSTRUCTION,
        prompts.VQA_INSTRUCTION,
        prompts.CXR_REPORT_INSTRUCTION,
        prompts.CXR_CLASSIFICATION_INSTRUCTION,
        prompts.PAD_UFES_INSTRUCTION,
        prompts.VINDR_INSTRUCTION,
        prompts.GENOMICS_INSTRUCTION,
    )
] + [
    "Question: Answer: Context: Given the findings: Q: Summarize the findings. A:",
    "Given the AP view X-ray image <img>. Reason for the study: Given the PA view X-ray image.",
    "Given the LATERAL view X-ray image <img>. Q: Describe the findings in the image following "
    "the instructions.",
    "Q: Is cardiomegaly indicated by the image? (A) No (B) Yes",
    "Q: Is pleural effusion indicated by the image? atelectasis consolidation edema pneumonia "
    "fracture support devices enlarged cardiomediastinum lung opacity no finding",
    "Patient History: Age: 51, Gender: female, Smoke: false, Drink: false, Family skin cancer "
    "history: true, Family any cancer history: false, Lesion region: back, Lesion itch: false, "
    "Lesion grew: false, Lesion bled: false, Lesion elevation: false, Fitzpatrick scale: 1.0, "
    "Diameters (mm): [12.0, 8.0]. unknown",
    "Q: Which of the following is the most likely diagnosis of the patient's skin lesion? "
    "(A) Nevus (B) Basal Cell Carcinoma (C) Squamous Cell Carcinoma (D) Actinic Keratosis "
    "(E) Seborrheic Keratosis (F) Melanoma",
    "Given mammogram image <img>. Image view: left craniocaudal right mediolateral oblique "
    "Q: What is the most likely breast BI-RADS score? (A) 1 (B) 2 (C) 3 (D) 4 (E) 5",
    "Image view: CC MLO Q: Which of the following is the most likely type of the patient's breast "
    "mass? calcification? (A) BENIGN (B) BENIGN_WITHOUT_CALLBACK (C) MALIGNANT",
    "Given <img>. Q: How many copies of this putative variant are shown in the middle of the "
    "image? (A) 0 (B) 1 (C) 2 A:",
    "There is no pneumothorax or pleural effusion. The cardiomediastinal and hilar contours are "
    "stable. Heart size is normal. The lungs are clear. No acute cardiopulmonary process.",
    "yes no maybe Yes No The patient presents with a history of fever, cough and chest pain.",
]


def train_sentencepiece(
    model_prefix: str | os.PathLike,
    texts: Iterable[str] = (),
    *,
    vocab_size: int = 2000,
    model_type: str = "unigram",
) -> str:
  """Trains a lossless SentencePiece model on ``texts`` + the prompt templates; returns the
  ``.model`` path.

  Ids follow seqio: pad 0, eos 1, unk 2, no bos. Lossless settings (identity normalisation, no
  dummy prefix, whitespace kept, byte fallback, digits split) make ``decode(encode(s)) == s``
  for any string and segment-wise tokenization concatenate exactly. ``hard_vocab_limit=False``
  lets a small corpus yield fewer pieces than asked rather than fail (SentencePiece's trainer otherwise shrinks it); ``<img>``
  is one user-defined piece so that exemplar placeholders cost one token.
  """
  import sentencepiece as spm  # local: training is rare

  lines = [
      line for t in list(texts) + _BUILTIN_TEXT for line in str(t).splitlines() if line.strip()
  ]
  model_prefix = pathlib.Path(model_prefix)
  model_prefix.parent.mkdir(parents=True, exist_ok=True)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines),
      model_writer=model,
      vocab_size=vocab_size,
      model_type=model_type,
      pad_id=0,
      eos_id=1,
      unk_id=2,
      bos_id=-1,
      normalization_rule_name="identity",
      add_dummy_prefix=False,
      remove_extra_whitespaces=False,
      byte_fallback=True,
      split_digits=True,
      character_coverage=1.0,
      hard_vocab_limit=False,
      user_defined_symbols=[IMAGE_TEXT],
      max_sentence_length=1 << 16,
      num_threads=2,
      minloglevel=2,
  )
  path = model_prefix.with_name(model_prefix.name + ".model")
  path.write_bytes(model.getvalue())
  return str(path)


def corpus_from_data(data_dir: str | os.PathLike, splits=("train",)) -> list[str]:
  """Prompt texts of every task whose data is under ``data_dir`` (missing datasets skipped)."""
  from tasks import readers  # local: readers import nothing heavy, but keep vocab standalone

  texts = []
  for task, template in prompts.TEMPLATES.items():
    module = readers.get_module(readers.TASK_READERS[task][0])
    for split in splits:
      if split not in module.SPLITS:
        continue
      try:
        result = readers.read_task(
            task, split, data_dir=pathlib.Path(data_dir) / module.DATASET_DIR, on_error="skip"
        )
      except (FileNotFoundError, NotImplementedError):
        continue
      for r in result.records:
        if r.get(template.answer_field) is None:
          continue
        texts.append(template.exemplar(r))
  return texts


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--output", required=True, help="model prefix; writes PREFIX.model")
  parser.add_argument("--vocab_size", type=int, default=2000)
  parser.add_argument(
      "--data_dir",
      default=os.environ.get("MEDPALM_DATA_DIR"),
      help="dataset root whose training prompts form the corpus",
  )
  args = parser.parse_args(argv)
  texts = corpus_from_data(args.data_dir) if args.data_dir else []
  path = train_sentencepiece(args.output, texts, vocab_size=args.vocab_size)
  vocab = MedPalmVocabulary(path)
  print(
      f"wrote {path}: {vocab.vocab_size - 1} pieces, image placeholder id "
      f"{vocab.image_placeholder_id}, {len(texts)} corpus prompts"
  )


if __name__ == "__main__":
  main()
