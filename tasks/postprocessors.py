"""Postprocessors: decoded model output (or target text) → the string the metrics compare.

seqio calls ``postprocess_fn(text, example=..., is_target=...)`` on both predictions and
``targets_pretokenized``, so targets and predictions go through the same normalisation. Targets
are "answer." (tasks.prompts.with_period); the period is a format marker, not part of the answer.
"""
from __future__ import annotations

import re
from typing import Sequence

_SPACE = re.compile(r"\s+")


def _as_str(text) -> str:
    if isinstance(text, bytes):
        return text.decode("utf-8", errors="replace")
    return str(text)


def normalize(text, example=None, is_target: bool = False) -> str:
    """Strip, collapse whitespace runs to one space, drop one trailing period."""
    del example, is_target
    text = _SPACE.sub(" ", _as_str(text)).strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text


def normalize_lower(text, example=None, is_target: bool = False) -> str:
    """normalize() then lower case: free-text VQA answers ("Yes" == "yes")."""
    return normalize(text, example, is_target).lower()


class OptionPostprocessor:
    """normalize(), then map a case-insensitive match of one of the task's options (or of its
    letter, "(B)" / "B") to that option's canonical text, so accuracy / F1 compare labels.
    Anything else is returned normalised, and counts as wrong."""

    def __init__(self, options: Sequence[str]):
        self.options = list(options)
        self._lookup = {o.lower(): o for o in self.options}
        for i, o in enumerate(self.options):
            letter = chr(ord("A") + i)
            self._lookup.setdefault(f"({letter.lower()})", o)
            self._lookup.setdefault(letter.lower(), o)
        self.__name__ = "option_postprocessor"

    def __call__(self, text, example=None, is_target: bool = False) -> str:
        text = normalize(text, example, is_target)
        key = text.lower()
        if key in self._lookup:
            return self._lookup[key]
        match = re.match(r"^\(([a-j])\)\s*(.*)$", key)  # "(B) Prilocaine"
        if match and match.group(2) in self._lookup:
            return self._lookup[match.group(2)]
        return text

    def __repr__(self) -> str:
        return f"OptionPostprocessor({self.options})"
