"""Splitting free-text radiology reports (MIMIC-III, MIMIC-CXR) into their headed sections.

A heading is an upper-case name from :data:`HEADINGS` at the start of a line followed by a colon
(``FINDINGS:``, ``IMPRESSION:``, ``INDICATION:`` ...). A section runs to the next heading. Only
known names count as headings, so upper-case words inside a section (``LEFT: ...``) do not cut it.
Section text is whitespace-normalised (runs of spaces/newlines → one space), as the paper does.
"""

from __future__ import annotations

import re

# Canonical section → the heading spellings that start it.
HEADINGS: dict[str, tuple[str, ...]] = {
    "findings": ("FINDINGS", "FINDING", "FINDINGS AND IMPRESSION"),
    "impression": ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS"),
    "indication": (
        "INDICATION",
        "INDICATIONS",
        "CLINICAL INDICATION",
        "HISTORY",
        "CLINICAL HISTORY",
        "REASON FOR EXAM",
        "REASON FOR EXAMINATION",
    ),
    "technique": ("TECHNIQUE", "PROCEDURE", "CONTRAST", "DOSE"),
    "comparison": ("COMPARISON", "COMPARISONS"),
    "examination": ("EXAMINATION", "EXAM", "STUDY"),
    "other": (
        "RECOMMENDATION",
        "RECOMMENDATIONS",
        "RECOMMENDATION(S)",
        "NOTIFICATION",
        "NOTE",
        "ADDENDUM",
        "WET READ",
        "REASON FOR THIS EXAMINATION",
        "MEDICAL CONDITION",
        "UNDERLYING MEDICAL CONDITION",
        "FINAL REPORT",
    ),
}
_CANONICAL = {name: canon for canon, names in HEADINGS.items() for name in names}
_HEADING_RE = re.compile(
    r"^[ \t]*("
    + "|".join(sorted((re.escape(n) for n in _CANONICAL), key=len, reverse=True))
    + r")[ \t]*:",
    re.MULTILINE,
)


def normalize_space(text: str) -> str:
  return " ".join(text.split())


def split_sections(text: str) -> dict[str, str]:
  """{canonical section: normalised text} for the sections present (first occurrence wins;
  a present heading with nothing after it maps to "")."""
  out: dict[str, str] = {}
  matches = list(_HEADING_RE.finditer(text))
  for m, nxt in zip(matches, matches[1:] + [None]):
    canon = _CANONICAL[m.group(1)]
    body = text[m.end() : nxt.start() if nxt else len(text)]
    out.setdefault(canon, normalize_space(body))
  return out
