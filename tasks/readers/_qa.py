"""Shared validation of four-option multiple-choice records (MedQA, MedMCQA)."""

from __future__ import annotations

from tasks.readers._common import ReaderError, get_str

LETTERS = "ABCD"


def options_from_letter_dict(obj: dict, path, where: str) -> list[str]:
  """``options`` {"A": .., "B": .., "C": .., "D": ..} → list[str] in A..D order (exactly 4)."""
  opts = obj.get("options")
  if not isinstance(opts, dict):
    raise ReaderError(path, where, "options", "missing or not an object {A..D: text}")
  keys = sorted(opts)
  if keys != list(LETTERS):
    raise ReaderError(path, where, "options", f"expected keys A, B, C, D, got {keys}")
  return [get_str(opts, k, path, where) for k in LETTERS]


def answer_index(letter, path, where: str, field: str = "answer_idx") -> int:
  """ "A".."D" → 0..3; anything else is an unknown label."""
  if not isinstance(letter, str) or letter.strip().upper() not in LETTERS:
    raise ReaderError(path, where, field, f"unknown label {letter!r}; expected one of A, B, C, D")
  return LETTERS.index(letter.strip().upper())


def check_answer_text(record: dict, obj: dict, path, where: str) -> None:
  """When the file also carries ``answer`` text, it must equal the indexed option."""
  if "answer" in obj and obj["answer"] is not None:
    text = str(obj["answer"]).strip()
    if text != record["answer"]:
      raise ReaderError(
          path,
          where,
          "answer",
          f"{text!r} is not option {LETTERS[record['answer_idx']]} " f"({record['answer']!r})",
      )
