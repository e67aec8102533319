"""Small synthetic MultiMedBench datasets written in each dataset's official release format.

``write_all(root, num_examples=8, seed=0)`` writes ``root/<DATASET_DIR>/`` for all 12 datasets with
the official file names, columns, encodings and image formats (JSON/JSONL/CSV(.gz), pickles,
PNG/JPEG, uncompressed and JPEG-compressed DICOM, GZIP TFRecords of tf.train.Example), so that
``tasks.readers`` and everything above them run unchanged on it — in tests and in the demo.
Everything is generated from the seed; nothing is copied from a real (let alone credentialed)
dataset. The same (root, num_examples, seed) always gives byte-identical files.

``num_examples`` is the number of records per split (classification datasets may hold a few more so
that every class appears; MIMIC-CXR counts studies, each with 1–2 images).

Learnable from the image, so a tiny model can show that it reads images:
* VQA-RAD: every image has one bright square, on the left or the right half and in the upper or
  lower half; the questions "Is the lesion on the left or right side of the image?" (answer
  ``left``/``right``) and "Is the lesion in the upper half of the image?" (``yes``/``no``) are
  answered by it. Slake and Path-VQA use the same images and questions.
* Classification datasets (MIMIC-CXR conditions, PAD-UFES-20, VinDr-Mammo, CBIS-DDSM): the class
  sets the horizontal position of a bright disc (MIMIC-CXR: which of the 5 major conditions is
  positive).
* PrecisionFDA: the genotype sets how many rows of the "supports variant" channel are bright in
  the middle columns (none / half / all).

Command line: ``python -m tasks.demo_data ROOT [--num_examples N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import pathlib
import pickle
import random

import numpy as np
from PIL import Image

from tasks.readers import mimic_iii, tfrecord

DATASETS = (
    "medqa",
    "medmcqa",
    "pubmedqa",
    "mimic_iii",
    "vqa_rad",
    "slake",
    "path_vqa",
    "mimic_cxr",
    "pad_ufes_20",
    "vindr_mammo",
    "cbis_ddsm",
    "precisionfda",
    "montgomery",
)


# --- file writers ----------------------------------------------------------------------------
def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


def _write_json(path: pathlib.Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), "utf-8")


def _csv_bytes(header: list[str], rows: list[dict]) -> bytes:
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return buf.getvalue().encode("utf-8")


def _write_csv(path: pathlib.Path, header: list[str], rows: list[dict]) -> None:
  """CSV (gzip-compressed, with a fixed mtime, when the name ends in .gz)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  data = _csv_bytes(header, rows)
  if path.suffix == ".gz":
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
      f.write(data)
  else:
    path.write_bytes(data)


def write_image(path: pathlib.Path, array: np.ndarray) -> None:
  """``uint8[H, W]`` or ``uint8[H, W, 3]`` → PNG or JPEG by suffix (JPEG quality 95)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  img = Image.fromarray(array)
  if path.suffix.lower() in (".jpg", ".jpeg"):
    img.save(path, format="JPEG", quality=95)
  else:
    img.save(path, format="PNG")


def write_dicom(
    path: pathlib.Path,
    array: np.ndarray,
    *,
    uid_seed: str,
    photometric: str = "MONOCHROME2",
    jpeg: bool = False,
    window: tuple[float, float] | None = None,
    modality: str = "MG",
    laterality: str | None = None,
    view: str | None = None,
) -> None:
  """A DICOM Part-10 file holding a grayscale ``uint8|uint16[H, W]`` image.

  ``jpeg=True`` (uint8 only) stores it JPEG-baseline compressed (transfer syntax
  1.2.840.10008.1.2.4.50), as many real mammography / chest X-ray files are. UIDs derive from
  ``uid_seed``, so the file is deterministic.
  """
  from pydicom.dataset import Dataset, FileMetaDataset
  from pydicom.encaps import encapsulate
  from pydicom.uid import (
      ExplicitVRLittleEndian,
      JPEGBaseline8Bit,
      SecondaryCaptureImageStorage,
      generate_uid,
  )

  if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
    raise ValueError(f"write_dicom wants uint8/uint16[H, W], got {array.dtype}{array.shape}")
  if jpeg and array.dtype != np.uint8:
    raise ValueError("JPEG baseline DICOM needs uint8 pixels")
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "sop"])
  meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.StudyInstanceUID = generate_uid(entropy_srcs=[uid_seed, "study"])
  ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
  ds.PatientID = "SYNTHETIC"
  ds.Modality = modality
  if laterality:
    ds.ImageLaterality = laterality
  if view:
    ds.ViewPosition = view
  bits = 8 if array.dtype == np.uint8 else 16
  ds.Rows, ds.Columns = array.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated = bits
  ds.BitsStored = bits if bits == 8 else 12
  ds.HighBit = ds.BitsStored - 1
  ds.PixelRepresentation = 0
  if window:
    ds.WindowCenter, ds.WindowWidth = window
  if jpeg:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.LossyImageCompression = "01"
  else:
    ds.PixelData = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
  path.parent.mkdir(parents=True, exist_ok=True)
  ds.save_as(path, enforce_file_format=True)


def write_tfrecord_gz(path: pathlib.Path, examples: list[dict]) -> None:
  """GZIP TFRecord of ``tf.train.Example`` protos built from {feature: list of values}."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
    for ex in examples:
      f.write(tfrecord.frame_record(tfrecord.encode_example(ex)))


# --- synthetic content -----------------------------------------------------------------------
def lesion_image(
    rng: np.random.Generator, *, side: str, upper: bool, height: int = 96, width: int = 128
) -> np.ndarray:
  """``uint8[height, width]``: dim noisy background + one bright square in the chosen quadrant."""
  img = rng.integers(10, 60, size=(height, width)).astype(np.uint8)
  s = max(8, height // 5)
  x0 = int(rng.integers(4, width // 2 - s - 4)) + (width // 2 if side == "right" else 0)
  y0 = int(rng.integers(4, height // 2 - s - 4)) + (0 if upper else height // 2)
  img[y0 : y0 + s, x0 : x0 + s] = rng.integers(220, 256, size=(s, s))
  return img


def class_image(
    rng: np.random.Generator,
    label: int,
    num_classes: int,
    *,
    height: int = 96,
    width: int = 96,
    dtype=np.uint8,
) -> np.ndarray:
  """``uint8|uint16[height, width]``: noise + a bright disc whose x position encodes ``label``."""
  top = 255 if dtype == np.uint8 else 4095
  img = rng.integers(0, top // 5, size=(height, width)).astype(dtype)
  cx = (label + 0.5) * width / num_classes
  cy = height / 2 + rng.uniform(-height / 8, height / 8)
  yy, xx = np.mgrid[:height, :width]
  r = max(3.0, width / num_classes / 2.5)
  img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = int(top * 0.9)
  return img


_ORGANS = ["liver", "kidney", "lung", "spleen", "pancreas", "heart", "brain", "colon"]
_FINDINGS = ["mass", "nodule", "effusion", "cyst", "fracture", "hemorrhage", "calcification"]
_WORDS = ["acute", "chronic", "mild", "moderate", "stable", "new", "small", "large", "bilateral"]


def _sentence(r: random.Random) -> str:
  return (
      f"There is a {r.choice(_WORDS)} {r.choice(_FINDINGS)} in the {r.choice(_ORGANS)}, "
      f"measuring {r.randint(2, 40)} mm."
  )


def _qa_item(r: random.Random) -> tuple[str, list[str], int]:
  organ, finding = r.choice(_ORGANS), r.choice(_FINDINGS)
  question = (
      f"A {r.randint(18, 90)}-year-old patient has a {r.choice(_WORDS)} {finding} of "
      f"the {organ}. Which of the following is the most appropriate next step?"
  )
  options = r.sample(
      [
          "Observation",
          "CT scan",
          "Biopsy",
          "Surgery",
          "MRI",
          "Antibiotics",
          "Ultrasound",
          "Reassurance",
      ],
      4,
  )
  return question, options, r.randrange(4)


# --- one writer per dataset ------------------------------------------------------------------
def _medqa(d: pathlib.Path, n: int, r: random.Random, rng) -> None:
  base = d / "data_clean/questions/US/4_options"
  for split in ("train", "dev", "test"):
    rows = []
    for _ in range(n):
      q, opts, i = _qa_item(r)
      rows.append(
          {
              "question": q,
              "answer": opts[i],
              "options": dict(zip("ABCD", opts)),
              "meta_info": r.choice(["step1", "step2&3"]),
              "answer_idx": "ABCD"[i],
              "metamap_phrases": q.split()[:5],
          }
      )
    _write_jsonl(base / f"phrases_no_exclude_{split}.jsonl", rows)


def _medmcqa(d: pathlib.Path, n: int, r: random.Random, rng) -> None:
  for split in ("train", "dev"):
    rows = []
    for k in range(n):
      q, opts, i = _qa_item(r)
      rows.append(
          {
              "question": q,
              "exp": "Explanation: " + _sentence(r),
              "cop": i + 1,
              "opa": opts[0],
              "opb": opts[1],
              "opc": opts[2],
              "opd": opts[3],
              "subject_name": "Medicine",
              "topic_name": None,
              "id": f"{split}-{k:04d}-{r.getrandbits(32):08x}",
              "choice_type": "single",
          }
      )
    _write_jsonl(d / f"{split}.json", rows)  # JSON Lines despite the extension, as released


def _pubmedqa(d: pathlib.Path, n: int, r: random.Random, rng) -> None:
  data, truth = {}, {}
  for k in range(2 * n):
    pmid = str(20000000 + k * 7919)
    decision = ["yes", "no", "maybe"][k % 3]
    data[pmid] = {
        "QUESTION": f"Does {r.choice(_WORDS)} {r.choice(_FINDINGS)} predict outcome?",
        "CONTEXTS": [_sentence(r), _sentence(r)],
        "LABELS": ["BACKGROUND", "RESULTS"],
        "MESHES": ["Humans"],
        "YEAR": str(r.randint(1990, 2020)),
        "reasoning_required_pred": decision,
        "reasoning_free_pred": decision,
        "final_decision": decision,
        "LONG_ANSWER": _sentence(r),
    }
    if k % 2:
      truth[pmid] = decision
  _write_json(d / "ori_pqal.json", data)
  _write_json(d / "test_ground_truth.json", truth)


_MIMIC_III_DESCRIPTIONS = {
    ("CT", "head"): "CT HEAD W/O CONTRAST",
    ("CT", "abdomen"): "CT ABDOMEN W/CONTRAST",
    ("CT", "chest"): "CT CHEST W/CONTRAST",
    ("MRI", "head"): "MR HEAD W & W/O CONTRAST",
    ("CT", "spine"): "CT C-SPINE W/O CONTRAST",
    ("CT", "neck"): "CT NECK W/CONTRAST",
    ("MRI", "spine"): "MR L SPINE W/O CONTRAST",
    ("CT", "sinus"): "CT SINUS/MANDIBLE W/O CONTRAST",
}


def _mimic_iii_text(r: random.Random, description: str) -> str:
  findings = " ".join(_sentence(r) for _ in range(r.randint(2, 4)))
  return (
      f"[**2150-{r.randint(1, 12)}-{r.randint(1, 28)}**] 10:{r.randint(10, 59)} AM\n"
      f" {description}                         Clip # [**Clip Number (Radiology) 1234**]\n"
      f" Reason: eval\n ____________________________________________________________\n"
      f"                                 FINAL REPORT\n"
      f" INDICATION: {r.choice(_WORDS)} pain.\n\n TECHNIQUE: Axial images.\n\n"
      f" FINDINGS: {findings}\n\n IMPRESSION: {r.choice(_WORDS).capitalize()} "
      f"{r.choice(_FINDINGS)}.\n"
  )


def _mimic_iii(d: pathlib.Path, n: int, r: random.Random, rng) -> None:
  header = [
      "ROW_ID",
      "SUBJECT_ID",
      "HADM_ID",
      "CHARTDATE",
      "CHARTTIME",
      "STORETIME",
      "CATEGORY",
      "DESCRIPTION",
      "CGID",
      "ISERROR",
      "TEXT",
  ]
  rows, quota = [], {s: n for s in mimic_iii.SPLITS}
  subject = 10000
  pairs = list(_MIMIC_III_DESCRIPTIONS.items())
  while any(quota.values()):
    subject += 1
    split = mimic_iii.split_of(str(subject))
    if not quota[split]:
      continue
    quota[split] -= 1
    pair, description = pairs[len(rows) % 6]  # the six common pairs
    rows.append(
        {
            "SUBJECT_ID": subject,
            "CATEGORY": "Radiology",
            "DESCRIPTION": description,
            "TEXT": _mimic_iii_text(r, description),
        }
    )
    if len(rows) % 4 == 0:  # rare pair, a non-CT/MR study and a nursing note: filtered
      pair, description = pairs[6 + len(rows) % 2]
      rows.append(
          {
              "SUBJECT_ID": subject,
              "CATEGORY": "Radiology",
              "DESCRIPTION": description,
              "TEXT": _mimic_iii_text(r, description),
          }
      )
      rows.append(
          {
              "SUBJECT_ID": subject,
              "CATEGORY": "Radiology",
              "DESCRIPTION": "CHEST (PA & LAT)",
              "TEXT": "FINDINGS: Clear.\n",
          }
      )
      rows.append(
          {
              "SUBJECT_ID": subject,
              "CATEGORY": "Nursing/other",
              "DESCRIPTION": "Report",
              "TEXT": "Patient resting.",
          }
      )
  for k, row in enumerate(rows):
    row.update(
        {
            "ROW_ID": 1000 + k,
            "HADM_ID": 100000 + k,
            "CHARTDATE": "2150-01-01",
            "CHARTTIME": "",
            "STORETIME": "",
            "CGID": "",
            "ISERROR": "",
        }
    )
  _write_csv(d / "NOTEEVENTS.csv.gz", header, rows)


VQA_QUESTIONS = (
    "Is the lesion on the left or right side of the image?",
    "Is the lesion in the upper half of the image?",
)


def _vqa_items(r: random.Random, rng, count: int):
  """(image uint8[H, W], [(question, answer, answer_type)]) per image, answers from the image."""
  for _ in range(count):
    side, upper = r.choice(["left", "right"]), r.random() < 0.5
    img = lesion_image(rng, side=side, upper=upper)
    yield img, [
        (VQA_QUESTIONS[0], side, "CLOSED"),
        (VQA_QUESTIONS[1], "yes" if upper else "no", "CLOSED"),
    ]


def _vqa_rad(d: pathlib.Path, n: int, r: random.Random, rng) -> None:
  qid, k = 0, 0
  for split, fname in (("train", "trainset.json"), ("test", "testset.json")):
    rows = []
    for img, qas in _vqa_items(r, rng, (n + 1) // 2):
      name = f"synpic{90000 + k}.jpg"
      k += 1
      write_image(d / "images" / name, img)
      for j, (q, a, t) in enumerate(qas):
        qid += 1
        rows.append(
            {
                "qid": qid,
                "image_name": name,
                "image_organ": "CHEST",
                "answer": a,
                "answer_type": t + (" " if qid % 5 == 0 else ""),  # as released
                "question_type": "POS",
                "question": q,
                "phrase_type": "freeform" if j == 0 else "para",
            }
        )
      if split == "train":  # a templated "frame" question: not in the paper's train set
        qid += 1
        rows.append({**rows[-1], "qid": qid, "phrase_type": "frame"})
    _write_json(d / fname, rows)


def _slake(d: pathlib.Path, n: int, r: random.Random, rng) -> None:
  qid, img_id = 0, 0
  zh = {
      VQA_QUESTIONS[0]: "病灶在图像的左侧还是右侧？",
      VQA_QUESTIONS[1]: "病灶在图像的上半部分吗？",
  }
  zh_answer = {"left": "左", "right": "右", "yes": "是", "no": "否"}
  for fname in ("train.json", "validate.json", "test.json"):
    rows = []
    for img, qas in _vqa_items(r, rng, max(1, n // 4)):
      img_id += 1
      write_image(d / "imgs" / f"xmlab{img_id}" / "source.jpg", img)
      for q, a, t in qas:
        for lang in ("en", "zh"):
          rows.append(
              {
                  "img_id": img_id,
                  "img_name": f"xmlab{img_id}/source.jpg",
                  "question": q if lang == "en" else zh[q],
                  "answer": a if lang == "en" else zh_answer[a],
                  "q_lang": lang,
                  "location": "Chest",
                  "modality": "CT",
                  "answer_type": t,
                  "base_type": "vqa",
                  "content_type": "Position",
                  "triple": ["vhead", "_", "_"],
                  "qid": qid,
              }
          )
          qid += 1
    _write_json(d / fname, rows)


def _path_vqa(d: pathlib.Path, n: int, r: random.Random, rng) -> None:
  qid = 0
  for split in ("train", "val", "test"):
    rows = []
    for k, (img, qas) in enumerate(_vqa_items(r, rng, (n + 1) // 2)):
      img_id = f"{split}_{k:04d}"
      write_image(d / "images" / split / f"{img_id}.jpg", np.stack([img] * 3, -1))
      for q, a, _ in qas:
        rows.append(
            {
                "answer_type": "yes/no" if a in ("yes", "no") else "other",
                "img_id": img_id,
                "label": {a: 1},
                "question_id": 100000 + qid,
                "question_type": q.split()[0].lower(),
                "sent": q,
            }
        )
        qid += 1
    path = d / "qas" / f"{split}_vqa.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(rows, protocol=4))


_CXR_COLUMNS = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]


def _mimic_cxr(d: pathlib.Path, n: int, r: random.Random, rng) -> None:
  split_rows, meta_rows, chex_rows = [], [], []
  study = 50000000
  for split in ("train", "validate", "test"):
    for k in range(n):
      study += 1
      subject = str(10000000 + 1000 * (study - 50000000) + r.randrange(1000))
      condition = k % 5  # the position of the disc = which of the 5 major is positive
      labels = {c: r.choice(["", "0.0", "-1.0"]) for c in _CXR_COLUMNS}
      labels[_CXR_COLUMNS[[0, 1, 2, 3, 9][condition]]] = "1.0"
      chex_rows.append({"subject_id": subject, "study_id": study, **labels})
      folder = d / "files" / f"p{subject[:2]}" / f"p{subject}"
      findings = " ".join(_sentence(r) for _ in range(2))
      folder.mkdir(parents=True, exist_ok=True)
      (folder / f"s{study}.txt").write_text(
          "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)"
          f"\n \n INDICATION:  ___M with {r.choice(_WORDS)} cough.\n \n TECHNIQUE:  Chest"
          f" PA and lateral\n \n COMPARISON:  None.\n \n FINDINGS: \n \n {findings}\n \n"
          f" IMPRESSION: \n \n No acute cardiopulmonary process.\n",
          "utf-8",
      )
      for view in ["PA", "LATERAL"][: 1 + k % 2]:
        dicom = f"{r.getrandbits(64):016x}-{r.getrandbits(32):08x}"
        write_image(
            folder / f"s{study}" / f"{dicom}.jpg",
            class_image(rng, condition, 5, height=112, width=96),
        )
        split_rows.append(
            {"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split}
        )
        meta_rows.append(
            {
                "dicom_id": dicom,
                "subject_id": subject,
                "study_id": study,
                "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                "ViewPosition": view,
                "Rows": 112,
                "Columns": 96,
                "StudyDate": 21800101,
                "StudyTime": 120000.0,
                "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                "ViewCodeSequence_CodeMeaning": "postero-anterior",
                "PatientOrientationCodeSequence_CodeMeaning": "Erect",
            }
        )
  _write_csv(
      d / "mimic-cxr-2.0.0-split.csv.gz",
      ["dicom_id", "study_id", "subject_id", "split"],
      split_rows,
  )
  _write_csv(d / "mimic-cxr-2.0.0-metadata.csv.gz", list(meta_rows[0]), meta_rows)
  _write_csv(
      d / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *_CXR_COLUMNS], chex_rows
  )


_PAD_COLUMNS = [
    "patient_id",
    "lesion_id",
    "smoke",
    "drink",
    "background_father",
    "background_mother",
    "age",
    "pesticide",
    "gender",
    "skin_cancer_history",
    "cancer_history",
    "has_piped_water",
    "has_sewage_system",
    "fitspatrick",
    "region",
    "diameter_1",
    "diameter_2",
    "diagnostic",
    "itch",
    "grew",
    "hurt",
    "changed",
    "bleed",
    "elevation",
    "img_id",
    "biopsed",
]
_PAD_CODES = ["NEV", "BCC", "SCC", "ACK", "SEK", "MEL"]


def _pad_ufes_20(d: pathlib.Path, n: int, r: random.Random, rng) -> None:
  rows = []
  per_class = max(3, -(-5 * n // 6))  # ≈ n test records after the 80/20 split, ≥ 1 per class
  for k in range(6 * per_class):
    label = k % 6
    patient, lesion = 100 + k, 1000 + k
    img_id = f"PAT_{patient}_{lesion}_{r.randint(100, 999)}.png"
    img = class_image(rng, label, 6, height=80, width=96)
    rgb = np.stack([img, (img * 0.8).astype(np.uint8), (img * 0.6).astype(np.uint8)], -1)
    write_image(d / "images" / f"imgs_part_{1 + k % 3}" / img_id, rgb)
    biopsed = r.random() < 0.7
    b = lambda: r.choice(["True", "False"]) if biopsed else ""  # noqa: E731
    rows.append(
        {
            "patient_id": f"PAT_{patient}",
            "lesion_id": lesion,
            "smoke": b(),
            "drink": b(),
            "background_father": r.choice(["POMERANIA", "GERMANY", ""]),
            "background_mother": "",
            "age": r.randint(18, 90),
            "pesticide": b(),
            "gender": r.choice(["FEMALE", "MALE"]) if biopsed else "",
            "skin_cancer_history": b(),
            "cancer_history": b(),
            "has_piped_water": b(),
            "has_sewage_system": b(),
            "fitspatrick": f"{r.randint(1, 6)}.0" if biopsed else "",
            "region": r.choice(["BACK", "FACE", "ARM", "NOSE", "CHEST"]),
            "diameter_1": f"{r.randint(3, 20)}.0" if biopsed else "",
            "diameter_2": f"{r.randint(3, 20)}.0" if biopsed else "",
            "diagnostic": "BOD" if k == 2 else _PAD_CODES[label],  # BOD: counted as SCC
            "itch": r.choice(["True", "False", "UNK"]),
            "grew": r.choice(["True", "False", "UNK"]),
            "hurt": r.choice(["True", "False"]),
            "changed": r.choice(["True", "False", "UNK"]),
            "bleed": r.choice(["True", "False"]),
            "elevation": r.choice(["True", "False"]),
            "img_id": img_id,
            "biopsed": str(biopsed),
        }
    )
  _write_csv(d / "metadata.csv", _PAD_COLUMNS, rows)


def _vindr_mammo(d: pathlib.Path, n: int, r: random.Random, rng) -> None:
  header = [
      "study_id",
      "series_id",
      "image_id",
      "laterality",
      "view_position",
      "height",
      "width",
      "breast_birads",
      "breast_density",
      "split",
  ]
  rows = []
  for split in ("training", "test"):
    for k in range(max(n, 5)):
      birads = 1 + k % 5
      series, image = (f"{r.getrandbits(128):032x}" for _ in range(2))
      if k % 2 == 0:  # a study's two breasts in one view, as the release has them
        study, view = f"{r.getrandbits(128):032x}", r.choice(["CC", "MLO"])
      laterality = "LR"[k % 2]
      img = class_image(rng, birads - 1, 5, height=128, width=96, dtype=np.uint16)
      mono1 = k % 3 == 2  # some scanners write MONOCHROME1 (inverted)
      write_dicom(
          d / "images" / study / f"{image}.dicom",
          (4095 - img).astype(np.uint16) if mono1 else img,
          uid_seed=image,
          photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
          window=(2048.0, 4096.0) if k % 2 else None,
          laterality=laterality,
          view=view,
      )
      rows.append(
          {
              "study_id": study,
              "series_id": series,
              "image_id": image,
              "laterality": laterality,
              "view_position": view,
              "height": 128,
              "width": 96,
              "breast_birads": f"BI-RADS {birads}",
              "breast_density": f"DENSITY {r.choice('ABCD')}",
              "split": split,
          }
      )
  _write_csv(d / "breast-level_annotations.csv", header, rows)


def _cbis_ddsm(d: pathlib.Path, n: int, r: random.Random, rng) -> None:
  pathologies = ["BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT"]
  for kind, prefix in (("mass", "Mass"), ("calc", "Calc")):
    for split, tag in (("train", "Training"), ("test", "Test")):
      extra = (
          ["mass shape", "mass margins"] if kind == "mass" else ["calc type", "calc distribution"]
      )
      density = "breast_density" if kind == "mass" else "breast density"  # as released
      header = [
          "patient_id",
          density,
          "left or right breast",
          "image view",
          "abnormality id",
          "abnormality type",
          *extra,
          "assessment",
          "pathology",
          "subtlety",
          "image file path",
          "cropped image file path",
          "ROI mask file path",
      ]
      rows = []
      for k in range(max(n, 3)):
        label = k % 3
        patient = f"P_{1 + 3 * k + (split == 'test'):05d}"  # unique case names
        side, view = r.choice(["LEFT", "RIGHT"]), r.choice(["CC", "MLO"])
        case = f"{prefix}-{tag}_{patient}_{side}_{view}_1"
        uid = f"1.3.6.1.4.1.9590.100.1.2.{r.getrandbits(40)}"
        csv_crop = f"{case}/{uid}.1/{uid}.2/000000.dcm"
        # TCIA's downloader writes other inner names: crop 1-1.dcm, full-size mask 1-2.dcm.
        inner = d / "CBIS-DDSM" / case / f"07-20-2016-DDSM-NA-{r.randint(10000, 99999)}"
        crop = class_image(rng, label, 3, height=72, width=64)
        write_dicom(
            inner / "1.000000-ROI mask images-1" / "1-1.dcm",
            crop,
            uid_seed=case + "crop",
            jpeg=k % 2 == 0,
        )
        mask = np.zeros((256, 192), np.uint8)
        mask[100:140, 80:120] = 255
        write_dicom(inner / "1.000000-ROI mask images-1" / "1-2.dcm", mask, uid_seed=case + "mask")
        rows.append(
            {
                "patient_id": patient,
                density: r.randint(1, 4),
                "left or right breast": side,
                "image view": view,
                "abnormality id": 1,
                "abnormality type": "mass" if kind == "mass" else "calcification",
                extra[0]: "OVAL",
                extra[1]: "CIRCUMSCRIBED",
                "assessment": r.randint(1, 5),
                "pathology": pathologies[label],
                "subtlety": r.randint(1, 5),
                "image file path": f"{case[:-2]}/{uid}.0/{uid}.1/000000.dcm",
                "cropped image file path": csv_crop + "\n",  # stray newline, as released
                "ROI mask file path": f"{case}/{uid}.1/{uid}.2/000001.dcm",
            }
        )
      _write_csv(d / f"{kind}_case_description_{split}_set.csv", header, rows)


def _variant_proto(ref: str, alts: list[str], start: int) -> bytes:
  """A minimal nucleus Variant: reference_name=14, start=16, end=13, reference_bases=6,
  alternate_bases=7 (the fields tasks.readers.precisionfda reads)."""
  enc, ld = tfrecord.encode_varint, tfrecord.length_delimited
  out = b"".join(
      [
          ld(14, b"chr20"),
          enc(16 << 3) + enc(start),
          enc(13 << 3) + enc(start + len(ref)),
          ld(6, ref.encode()),
      ]
  )
  return out + b"".join(ld(7, a.encode()) for a in alts)


def _precisionfda(d: pathlib.Path, n: int, r: random.Random, rng) -> None:
  for split in ("train", "test"):
    examples = []
    for k in range(n):
      label = k % 3
      start = 10_000_000 + r.randrange(1_000_000)
      indel = k % 4 == 3
      ref = r.choice("ACGT") + ("AG" if indel else "")
      alt = r.choice([b for b in "ACGT" if b != ref[0]])
      pileup = rng.integers(0, 60, size=(100, 221, 6)).astype(np.uint8)
      # reads supporting the alt allele (channel 5) in the middle columns: 0, half, all rows
      support = [0, 50, 100][label]
      pileup[:support, 105:116, 4] = 254
      examples.append(
          {
              "image/encoded": [pileup.tobytes()],
              "image/shape": [100, 221, 6],
              "label": [label],
              "locus": [f"chr20:{start}-{start}".encode()],
              "variant/encoded": [_variant_proto(ref, [alt], start)],
              "alt_allele_indices/encoded": [b"\n\x01\x00"],  # indices: [0]
              "variant_type": [2 if indel else 1],
              "sequencing_type": [0],
          }
      )
    write_tfrecord_gz(d / split / f"examples_{split}.tfrecord.gz", examples)
    _write_json(
        d / split / f"examples_{split}.tfrecord.gz.example_info.json",
        {"version": "1.5.0", "shape": [100, 221, 6], "channels": [1, 2, 3, 4, 5, 6]},
    )


def _montgomery(d: pathlib.Path, n: int, r: random.Random, rng) -> None:
  """The NLM release layout: MontgomerySet/CXR_png/MCUCXR_<NNNN>_<label>.png (8-bit gray PNG)
  and ClinicalReadings/<same>.txt; label 1 (tuberculosis) puts the disc on the right."""
  base = d / "MontgomerySet"
  for k in range(max(n, 4)):
    label = k % 2
    name = f"MCUCXR_{k + 1:04d}_{label}"
    write_image(base / "CXR_png" / f"{name}.png", class_image(rng, label, 2, height=120, width=100))
    reading = (
        "normal"
        if label == 0
        else f"{r.choice(['right', 'left'])} upper lobe cavitary infiltrate, likely TB"
    )
    path = base / "ClinicalReadings" / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"Patient's Sex: {r.choice('MF')}\nPatient's Age: {r.randint(18, 80):03d}Y\n{reading}\n",
        "utf-8",
    )


_WRITERS = {
    "medqa": _medqa,
    "medmcqa": _medmcqa,
    "pubmedqa": _pubmedqa,
    "mimic_iii": _mimic_iii,
    "vqa_rad": _vqa_rad,
    "slake": _slake,
    "path_vqa": _path_vqa,
    "mimic_cxr": _mimic_cxr,
    "pad_ufes_20": _pad_ufes_20,
    "vindr_mammo": _vindr_mammo,
    "cbis_ddsm": _cbis_ddsm,
    "precisionfda": _precisionfda,
    "montgomery": _montgomery,
}


def write(root, dataset: str, num_examples: int = 8, seed: int = 0) -> pathlib.Path:
  """Writes one dataset under ``root/<dataset>/`` and returns that directory."""
  if dataset not in _WRITERS:
    raise KeyError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
  if num_examples < 1:
    raise ValueError("num_examples must be >= 1")
  directory = pathlib.Path(root) / dataset
  directory.mkdir(parents=True, exist_ok=True)
  r = random.Random(f"{seed}/{dataset}")
  rng = np.random.default_rng([seed, DATASETS.index(dataset)])
  _WRITERS[dataset](directory, num_examples, r, rng)
  return directory


def write_all(
    root, num_examples: int = 8, seed: int = 0, datasets=DATASETS
) -> dict[str, pathlib.Path]:
  """Writes every dataset in ``datasets`` under ``root``; returns {dataset: directory}.
  Point ``MEDPALM_DATA_DIR`` at ``root`` to use them."""
  return {name: write(root, name, num_examples, seed) for name in datasets}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("root")
  parser.add_argument("--num_examples", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
  args = parser.parse_args(argv)
  for name, path in write_all(args.root, args.num_examples, args.seed, args.datasets).items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  main()
