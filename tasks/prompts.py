"""The paper's prompt templates (Med-PaLM M, Tables A.9–A.13), rendered from reader records.

A prompt is instruction + k exemplars + query; the model's input is their concatenation and the
target is the answer text followed by a period. Prompts are kept as *segments with roles* rather
than one string, because length budgeting (`tasks.preprocessors`) treats them differently: it
drops exemplars first, then shortens the longest CONTEXT from the middle, and never cuts the
IMAGE, the QUERY (question and options) or the CUE (``A:`` / ``Answer:``).

Conventions (the paper does not fix whitespace; its renderings put each exemplar and the query on
their own lines, which is what we do):

* the instruction is followed by ``"\\n"``; each exemplar is the rendered query, a space, its
  target, ``"\\n"``; the query ends with its answer cue and nothing after it;
* the query's ``<img>`` is its own IMAGE segment: the tokenizer step replaces it by
  ``num_image_tokens`` placeholder ids (where the image embeddings go); an exemplar's ``<img>`` is
  plain text (the paper's "dummy text placeholder": exemplars carry no image);
* a field that already ends with a period is not given a second one (``"... normal."`` stays
  ``"... normal."``), so targets always end with exactly one ``.``;
* exemplars come from the training split, drawn deterministically from the example id, never the
  example itself nor a record sharing its study / image (for MIMIC-CXR every image of a study
  carries the same report, so a same-study exemplar would leak the target).

Where the paper gives no text, ours is marked as such (see ``PAPER_GIVES_NO_TEXT``): PubMedQA
reuses the QA format with the abstract as a CONTEXT segment and its own instruction; CBIS-DDSM has
no instruction line in the paper's example, so none is used; the zero-shot (non-CoT) tuberculosis
prompt and the two-view report prompt are ours.

VQA question types, as the paper's Table A.10 examples carry them inside the question: VQA-RAD
``answer_type`` CLOSED → ``(closed domain)``, OPEN → ``(open domain)``; Path-VQA the release's
answer-type vocabulary, CLOSED (yes/no answers) → ``(yes/no)``, OPEN → ``(other)`` (the paper
shows only ``(other)``); Slake none (the paper's Slake example has no suffix).

Exemplars are drawn among training records of the query's own ``condition`` and ``view`` where the
task's records have them (``Template.match_keys``; MIMIC-CXR, VinDr-Mammo), as in the paper's
examples; without such a record any eligible one is drawn. The tuberculosis tasks use the
paper's hand-written exemplar (``Template.fixed_exemplars``), not a training record.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import random
from typing import Callable, Mapping, Sequence

IMG = "<img>"
LETTERS = "ABCDEFGHIJ"


class Role(enum.IntEnum):
  """What a segment is, for length budgeting (see tasks.preprocessors.budget_lengths)."""

  INSTRUCTION = 0  # shortened from the middle only after exemplars and contexts are exhausted
  EXEMPLAR = 1  # dropped whole, first
  CONTEXT = 2  # findings / indication / patient history / abstract: shortened from the middle
  QUERY = 3  # the question and its options: never cut unless nothing else is left
  IMAGE = 4  # the query's <img>: becomes num_image_tokens placeholder ids, never cut
  CUE = 5  # the answer cue "A:" / "Answer:": never cut


@dataclasses.dataclass(frozen=True)
class Segment:
  role: Role
  text: str


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A rendered example: ``text() + " " + target`` reads like one more exemplar."""

  instruction: str
  exemplars: tuple[str, ...]
  query: tuple[Segment, ...]
  target: str

  def segments(self) -> list[Segment]:
    segs = [Segment(Role.INSTRUCTION, self.instruction)] if self.instruction else []
    segs += [Segment(Role.EXEMPLAR, e) for e in self.exemplars]
    return segs + list(self.query)

  def text(self) -> str:
    """The model's input as text, the query's ``<img>`` included literally."""
    return "".join(s.text for s in self.segments())


def with_period(text: str) -> str:
  """``text`` stripped and ending with exactly one period (the paper's target format)."""
  text = text.strip()
  return text if text.endswith(".") else text + "."


def without_period(text: str) -> str:
  """``text`` stripped of surrounding space and of one trailing period (for "<field>. Q:")."""
  text = text.strip()
  return text[:-1].rstrip() if text.endswith(".") else text


def options_text(options: Sequence[str]) -> str:
  """``(A) first (B) second ...`` — the paper's multiple-choice rendering."""
  if len(options) > len(LETTERS):
    raise ValueError(f"at most {len(LETTERS)} options are supported, got {len(options)}")
  return " ".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))


# --------------------------------------------------------------------------------------------
# Instructions (verbatim, Tables A.9–A.13; PubMedQA: ours, see module docstring)

QA_INSTRUCTION = (
    "Instructions: The following are multiple choice questions about medical knowledge. Solve them "
    "in a step-by-step fashion, starting by summarizing the available information. Output a single "
    "option from the four options as the final answer."
)
PUBMEDQA_INSTRUCTION = (
    "Instructions: The following are multiple choice questions about medical research. Determine "
    "the answer to the question given the context of the abstract. Output a single option from "
    "the three options as the final answer."
)
MIMIC_III_INSTRUCTION = (
    "Instructions: You are a helpful radiology assistant. The following are questions about "
    "radiology reports. Summarize the findings in the report into diagnostic statements."
)
VQA_INSTRUCTION = (
    "Instructions: You are a helpful medical assistant. The following are questions about medical "
    "knowledge. Solve them in a step-by-step fashion, referring to authoritative sources as needed."
)
CXR_REPORT_INSTRUCTION = (
    "Instructions: You are a helpful radiology assistant. Describe what lines, tubes, and devices "
    "are present and each of their locations. Describe if pneumothorax is present; if present, "
    "describe size on each side. Describe if pleural effusion is present; if present, describe "
    "amount on each side. Describe if lung opacity (atelectasis, fibrosis, consolidation, "
    "infiltrate, lung mass, pneumonia, pulmonary edema) is present; if present, describe kinds and "
    "locations. Describe the cardiac silhouette size. Describe the width and contours of the "
    "mediastinum. Describe if hilar enlargement is present; if enlarged, describe side. Describe "
    "what fractures or other skeletal abnormalities are present."
)
CXR_CLASSIFICATION_INSTRUCTION = (
    "Instructions: You are a helpful radiology assistant. The following are questions about "
    "findings in chest X-ray in different views. Identify if a specific type of abnormality is "
    "shown in the X-ray."
)
PAD_UFES_INSTRUCTION = (
    "Instructions: You are a helpful dermatology assistant. The following are questions about skin "
    "lesions. Categorize the skin lesions into the most likely class given the patient history."
)
VINDR_INSTRUCTION = (
    "Instructions: You are a helpful medical assistant. The following are questions about "
    "mammography reading. Provide a breast-level assessment based on the BI-RADS categories."
)
GENOMICS_INSTRUCTION = (
    "Instructions: You are a helpful genetic assistant. The following are questions about variant "
    "calling. Identify the number of copies of the putative variant in pileup images."
)


# --------------------------------------------------------------------------------------------
# Queries: record → segments (ending with the answer cue). Records follow tasks/readers schemas.


def _q(text: str) -> Segment:
  return Segment(Role.QUERY, text)


def _image() -> Segment:
  return Segment(Role.IMAGE, IMG)


def _cue(text: str = "A:") -> Segment:
  return Segment(Role.CUE, text)


def qa_query(r: Mapping) -> list[Segment]:
  return [_q(f"Question: {r['question'].strip()}\n{options_text(r['options'])}\n"), _cue("Answer:")]


def pubmedqa_query(r: Mapping) -> list[Segment]:
  return [
      _q("Context: "),
      Segment(Role.CONTEXT, r["context"].strip()),
      _q(f"\nQuestion: {r['question'].strip()}\n{options_text(r['options'])}\n"),
      _cue("Answer:"),
  ]


def mimic_iii_query(r: Mapping) -> list[Segment]:
  return [
      _q("Given the findings: "),
      Segment(Role.CONTEXT, without_period(r["findings"])),
      _q(". Q: Summarize the findings.\n"),
      _cue(),
  ]


def vqa_query(r: Mapping) -> list[Segment]:
  return [_q("Given "), _image(), _q(f". Q: {r['question'].strip()}\n"), _cue()]


VQA_RAD_QUESTION_TYPES = {"CLOSED": "closed domain", "OPEN": "open domain"}
PATH_VQA_QUESTION_TYPES = {"CLOSED": "yes/no", "OPEN": "other"}


def _typed_vqa_query(types: Mapping[str, str]):
  def query(r: Mapping) -> list[Segment]:
    # A user's own question (inference on a JSONL line) may come without a question type.
    kind = types.get(str(r.get("answer_type") or "").strip().upper())
    suffix = f" ({kind})" if kind else ""
    return [_q("Given "), _image(), _q(f". Q: {r['question'].strip()}{suffix}\n"), _cue()]

  return query


vqa_rad_query = _typed_vqa_query(VQA_RAD_QUESTION_TYPES)
path_vqa_query = _typed_vqa_query(PATH_VQA_QUESTION_TYPES)


def cxr_report_query(r: Mapping) -> list[Segment]:
  indication = without_period(r.get("indication") or "") or "unknown"
  return [
      _q(f"Given the {r['view']} view X-ray image "),
      _image(),
      _q(". Reason for the study: "),
      Segment(Role.CONTEXT, indication),
      _q(".\nQ: Describe the findings in the image following the instructions.\n"),
      _cue(),
  ]


def cxr_classification_query(r: Mapping) -> list[Segment]:
  return [
      _q(f"Given the {r['view']} view X-ray image "),
      _image(),
      _q(f". Q: Is {r['condition']} indicated by the image? {options_text(r['options'])}\n"),
      _cue(),
  ]


def pad_ufes_query(r: Mapping) -> list[Segment]:
  history = ", ".join(f"{name}: {value}" for name, value in r["history"])
  return [
      _q("Given "),
      _image(),
      _q(". Patient History: "),
      Segment(Role.CONTEXT, history),
      _q(
          ".\nQ: Which of the following is the most likely diagnosis of the patient's skin "
          f"lesion?\n{options_text(r['options'])}\n"
      ),
      _cue(),
  ]


_LATERALITY = {"L": "left", "R": "right", "LEFT": "left", "RIGHT": "right"}
_MAMMO_VIEW = {"CC": "craniocaudal", "MLO": "mediolateral oblique"}


_LATERALITY["B"] = "bilateral"


def vindr_view(laterality: str, view: str) -> str:
  """``L``, ``CC`` → ``left craniocaudal``; ``B`` (both breasts side by side in one image,
  tasks.readers.vindr_mammo ``bilateral=True``), ``CC`` → ``bilateral craniocaudal``, the
  paper's wording."""
  side = _LATERALITY.get(laterality.upper(), laterality.lower())
  return f"{side} {_MAMMO_VIEW.get(view.upper(), view.lower())}"


def vindr_query(r: Mapping) -> list[Segment]:
  return [
      _q("Given mammogram image "),
      _image(),
      _q(
          f". Image view: {vindr_view(r['laterality'], r['view'])} Q: What is the most likely "
          f"breast BI-RADS score? {options_text(r['options'])}\n"
      ),
      _cue(),
  ]


def cbis_ddsm_query(r: Mapping) -> list[Segment]:
  return [
      _q("Given mammogram image "),
      _image(),
      _q(
          f". Image view: {r['view']} Q: Which of the following is the most likely type of the "
          f"patient's breast {r['abnormality']}? {options_text(r['options'])}\n"
      ),
      _cue(),
  ]


def genomics_query(r: Mapping) -> list[Segment]:
  return [
      _q("Given "),
      _image(),
      _q(
          ". Q: How many copies of this putative variant are shown in the middle of the image? "
          f"{options_text(r['options'])} "
      ),
      _cue(),
  ]


# --------------------------------------------------------------------------------------------
# Per-task templates


@dataclasses.dataclass(frozen=True)
class Template:
  """How one task renders a record.

  instruction: first line of every prompt ("" for none).
  num_shots: exemplars per prompt (the paper's few-shot setup for the task).
  query: record → query segments; the roles must be the same for every record of the task
    (the TF side relies on a static layout).
  answer_field: the record field holding the target text.
  fixed_exemplars: exemplar texts (each ending with "\\n") used as they are for every query,
    instead of drawing from the training split (the paper's hand-crafted TB exemplar).
  match_keys: record fields an exemplar must share with its query when the pool has such a
    record (condition / view).
  """

  instruction: str
  num_shots: int
  query: Callable[[Mapping], list[Segment]]
  answer_field: str = "answer"
  fixed_exemplars: tuple[str, ...] = ()  # hand-written exemplar texts used for every query
  match_keys: tuple[str, ...] = ()  # exemplars share these record fields with the query

  @property
  def has_image(self) -> bool:
    return Role.IMAGE in self.query_roles

  @property
  def query_roles(self) -> tuple[Role, ...]:
    return _ROLE_CACHE[self.query]

  def target(self, record: Mapping) -> str:
    answer = record.get(self.answer_field)
    if not isinstance(answer, str) or not answer.strip():
      raise ValueError(
          f"record {record.get('id')!r}: field {self.answer_field!r} must be a "
          f"non-empty string, got {answer!r}"
      )
    return with_period(answer)

  def exemplar(self, record: Mapping) -> str:
    """One solved example: the query with its literal ``<img>``, then the target, then \\n."""
    return "".join(s.text for s in self.query(record)) + " " + self.target(record) + "\n"

  def render(self, record: Mapping, exemplars: Sequence[Mapping] = ()) -> Prompt:
    texts = self.fixed_exemplars or tuple(self.exemplar(e) for e in exemplars)
    return Prompt(
        instruction=self.instruction + "\n" if self.instruction else "",
        exemplars=tuple(texts),
        query=tuple(self.query(record)),
        target=self.target(record),
    )


# The static role layout of each query function (computed on a probe record).
_PROBE = {
    "question": "q",
    "options": ["a", "b"],
    "context": "c",
    "findings": "f",
    "view": "AP",
    "indication": "i",
    "condition": "c",
    "history": [("Age", "1")],
    "laterality": "L",
    "abnormality": "mass",
    "answer_type": "OPEN",
    "views": ["PA", "LATERAL"],
}
_ROLE_CACHE: dict[Callable, tuple[Role, ...]] = {}
for _fn in (
    qa_query,
    pubmedqa_query,
    mimic_iii_query,
    vqa_query,
    vqa_rad_query,
    path_vqa_query,
    cxr_report_query,
    cxr_classification_query,
    pad_ufes_query,
    vindr_query,
    cbis_ddsm_query,
    genomics_query,
):
  _ROLE_CACHE[_fn] = tuple(s.role for s in _fn(_PROBE))

# Keys are the multimedbench_<key> task names. Shots per the paper's Table A.1 (PubMedQA, not in
# it: 2, as MedQA and MedMCQA).
TEMPLATES: dict[str, Template] = {
    "medqa": Template(QA_INSTRUCTION, 2, qa_query),
    "medmcqa": Template(QA_INSTRUCTION, 2, qa_query),
    "pubmedqa": Template(PUBMEDQA_INSTRUCTION, 2, pubmedqa_query),
    "mimic_iii": Template(MIMIC_III_INSTRUCTION, 0, mimic_iii_query, answer_field="impression"),
    "vqa_rad": Template(VQA_INSTRUCTION, 1, vqa_rad_query),
    "slake": Template(VQA_INSTRUCTION, 1, vqa_query),
    "path_vqa": Template(VQA_INSTRUCTION, 1, path_vqa_query),
    "mimic_cxr_report": Template(
        CXR_REPORT_INSTRUCTION, 1, cxr_report_query, answer_field="findings", match_keys=("view",)
    ),
    "mimic_cxr_classification": Template(
        CXR_CLASSIFICATION_INSTRUCTION,
        1,
        cxr_classification_query,
        match_keys=("condition", "view"),
    ),
    "pad_ufes_20": Template(PAD_UFES_INSTRUCTION, 1, pad_ufes_query),
    "vindr_mammo": Template(VINDR_INSTRUCTION, 1, vindr_query, match_keys=("view",)),
    "cbis_ddsm_mass": Template("", 0, cbis_ddsm_query),
    "cbis_ddsm_calc": Template("", 0, cbis_ddsm_query),
    "precisionfda": Template(GENOMICS_INSTRUCTION, 0, genomics_query),
}


# --------------------------------------------------------------------------------------------
# The paper's experiments beyond the 14 training tasks (evaluation only)

TB_QUESTION = "Is it a normal chest x-ray?"
# Fig. 3, verbatim: the chain-of-thought instruction and its hand-written, image-free exemplar.
TB_COT_INSTRUCTION = (
    "Instructions: You are a helpful radiology assistant. The following are questions about "
    "tuberculosis vs normal chest X-rays. Solve it step by step, output a Yes/No answer and "
    "explanation."
)
TB_COT_EXEMPLAR = (
    f"Given {IMG}. Q: {TB_QUESTION} A: No, there is some re-accommodation of pleural fluid along "
    "lateral left chest wall.\n"
)
# Table 4's classification prompt is described ("a two-choice question answering task ...
# with a text-only one-shot exemplar") but not printed: ours is Fig. 3's with the instruction
# asking for the Yes/No answer only and the hand-written exemplar answering with it.
TB_INSTRUCTION = (
    "Instructions: You are a helpful radiology assistant. The following are questions about "
    "tuberculosis vs normal chest X-rays. Output a Yes/No answer."
)
TB_EXEMPLAR = f"Given {IMG}. Q: {TB_QUESTION}\nA: No.\n"


def tb_query(r: Mapping) -> list[Segment]:
  del r  # the same question for every image
  return [_q("Given "), _image(), _q(f". Q: {TB_QUESTION}\n"), _cue()]


def tb_cot_query(r: Mapping) -> list[Segment]:
  """Fig. 3's query ends with the question (no answer cue): the model writes its reasoning."""
  del r
  return [_q("Given "), _image(), _q(f". Q: {TB_QUESTION}")]


def cxr_two_view_query(r: Mapping) -> list[Segment]:
  """Two images in one prompt (ours: the paper does not print its two-view prompt). The frontal
  view comes first, then the lateral one, each named as in the single-view prompt."""
  frontal, lateral = r["views"]
  indication = without_period(r.get("indication") or "") or "unknown"
  return [
      _q(f"Given the {frontal} view X-ray image "),
      _image(),
      _q(f" and the {lateral} view X-ray image "),
      _image(),
      _q(". Reason for the study: "),
      Segment(Role.CONTEXT, indication),
      _q(".\nQ: Describe the findings in the images following the instructions.\n"),
      _cue(),
  ]


for _fn in (tb_query, tb_cot_query, cxr_two_view_query):
  _ROLE_CACHE[_fn] = tuple(s.role for s in _fn(_PROBE))

EXPERIMENT_TEMPLATES: dict[str, Template] = {
    "montgomery_tb": Template(TB_INSTRUCTION, 1, tb_query, fixed_exemplars=(TB_EXEMPLAR,)),
    "montgomery_tb_cot": Template(
        TB_COT_INSTRUCTION, 1, tb_cot_query, fixed_exemplars=(TB_COT_EXEMPLAR,)
    ),
    "mimic_iii_ood": TEMPLATES["mimic_iii"],
    "mimic_cxr_report_two_view": Template(
        CXR_REPORT_INSTRUCTION, 1, cxr_two_view_query, answer_field="findings"
    ),
}
ALL_TEMPLATES: dict[str, Template] = {**TEMPLATES, **EXPERIMENT_TEMPLATES}

# Where the paper prints no prompt text, what we use (README: "The prompts").
PAPER_GIVES_NO_TEXT = {
    "pubmedqa": "QA format with the abstract as context and PUBMEDQA_INSTRUCTION",
    "montgomery_tb": "Fig. 3's prompt asking for the Yes/No answer only (TB_INSTRUCTION)",
    "mimic_cxr_report_two_view": "the single-view prompt naming both views (cxr_two_view_query)",
}


# --------------------------------------------------------------------------------------------
# Exemplar choice


def _hash64(*parts: str) -> int:
  digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "little")


def exemplar_group(record: Mapping) -> str:
  """Records sharing this key must not serve as each other's exemplar (same study / image)."""
  for key in ("study_id", "image_path"):
    if record.get(key):
      return f"{key}:{record[key]}"
  return f"id:{record['id']}"


def exemplar_pool(records: Sequence[Mapping], max_size: int, salt: str) -> list[Mapping]:
  """At most ``max_size`` training records to draw exemplars from, chosen by a seeded hash.

  Bounding the pool keeps the per-task exemplar table small (it is a graph constant) while the
  choice stays a deterministic function of the data.
  """
  if len(records) <= max_size:
    return list(records)
  ranked = sorted(records, key=lambda r: _hash64(salt, "pool", str(r["id"])))
  return ranked[:max_size]


def match_value(record: Mapping, keys: Sequence[str]) -> tuple | None:
  """The record's values of ``keys`` (None when it lacks one: nothing to match on)."""
  values = tuple(record.get(k) for k in keys)
  return values if keys and all(v not in (None, "") for v in values) else None


def exemplar_groups(pool: Sequence[Mapping], keys: Sequence[str]) -> dict[tuple, list[int]]:
  """Pool indices per value of ``keys`` (build once per pool; see choose_exemplars)."""
  groups: dict[tuple, list[int]] = {}
  for i, r in enumerate(pool):
    value = match_value(r, keys)
    if value is not None:
      groups.setdefault(value, []).append(i)
  return groups


def choose_exemplars(
    record: Mapping,
    pool: Sequence[Mapping],
    k: int,
    salt: str,
    match_keys: Sequence[str] = (),
    groups: Mapping[tuple, Sequence[int]] | None = None,
) -> list[int]:
  """Indices of ``k`` distinct pool records, a pure function of (salt, record id, pool).

  Never the record itself nor one of its exemplar_group. With ``match_keys`` the exemplars are
  drawn first among pool records with the query's values of those fields (``groups`` =
  exemplar_groups(pool, match_keys), computed here when not given), then, if too few, among the
  rest. Returns fewer than ``k`` when the pool has fewer eligible records.
  """
  if k <= 0 or not pool:
    return []
  rng = random.Random(_hash64(salt, "exemplars", str(record["id"])))
  own_id, own_group = str(record["id"]), exemplar_group(record)

  def eligible(i: int) -> bool:
    other = pool[i]
    return str(other["id"]) != own_id and exemplar_group(other) != own_group

  chosen: list[int] = []
  value = match_value(record, match_keys)
  if value is not None:
    if groups is None:
      groups = exemplar_groups(pool, match_keys)
    _draw(list(groups.get(value, ())), k, rng, eligible, chosen)
  if len(chosen) < k:
    _draw(range(len(pool)), k, rng, eligible, chosen)
  return chosen


def _draw(candidates: Sequence[int], k: int, rng: random.Random, eligible, chosen: list[int]):
  """Appends eligible candidates to ``chosen`` until it holds ``k``."""
  if not candidates:
    return
  for _ in range(32 * k):  # random probes first: O(k) for any realistic pool
    i = candidates[rng.randrange(len(candidates))]
    if i not in chosen and eligible(i):
      chosen.append(i)
      if len(chosen) == k:
        return
  start = rng.randrange(len(candidates))  # tiny or mostly ineligible pools: deterministic scan
  for j in range(len(candidates)):
    i = candidates[(start + j) % len(candidates)]
    if i not in chosen and eligible(i):
      chosen.append(i)
      if len(chosen) == k:
        return


def render(
    task: str, record: Mapping, train_records: Sequence[Mapping] = (), *, salt: str | None = None
) -> Prompt:
  """The prompt of ``record`` for task ``task`` (e.g. ``"vqa_rad"``), exemplars from
  ``train_records`` (all of them form the pool here; tasks bound the pool, see exemplar_pool)."""
  template = ALL_TEMPLATES[task.removeprefix("multimedbench_")]
  salt = task if salt is None else salt
  if template.fixed_exemplars:
    return template.render(record)
  picks = choose_exemplars(record, train_records, template.num_shots, salt, template.match_keys)
  return template.render(record, [train_records[i] for i in picks])
