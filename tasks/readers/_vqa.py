"""Shared building of VQARecord dicts (VQA-RAD, Slake, Path-VQA)."""

from __future__ import annotations

import pathlib

from tasks.readers._common import ReaderError, get_str

ANSWER_TYPES = ("OPEN", "CLOSED")


def answer_type(obj: dict, key: str, path, where: str) -> str:
  """``OPEN``/``CLOSED`` (trailing spaces and case tolerated: VQA-RAD has ``"CLOSED "``)."""
  value = get_str(obj, key, path, where).upper()
  if value not in ANSWER_TYPES:
    raise ReaderError(path, where, key, f"unknown answer type {value!r}; expected OPEN or CLOSED")
  return value


def vqa_record(
    *,
    id: str,
    image_dir: pathlib.Path,
    image_rel: str,
    question: str,
    answer: str,
    answer_type: str,
    lang: str,
    path,
    where: str,
    image_field: str,
    check_images: bool,
) -> dict:
  image = image_dir / image_rel
  if check_images and not image.is_file():
    raise ReaderError(path, where, image_field, f"image file not found: {image}")
  return {
      "id": id,
      "image_path": str(image),
      "question": question,
      "answer": answer,
      "answer_type": answer_type,
      "lang": lang,
  }
