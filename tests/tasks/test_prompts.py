"""Golden prompts: for a hand-made record per task, the rendered prompt equals the paper's text.

The expected strings are typed out here (not produced by tasks.prompts) from the paper's Tables
A.9–A.13, with our whitespace convention (tasks/prompts.py docstring).
"""

import pytest

from tasks import postprocessors, prompts

QA_I = (
    "Instructions: The following are multiple choice questions about medical knowledge. Solve "
    "them in a step-by-step fashion, starting by summarizing the available information. Output "
    "a single option from the four options as the final answer.\n"
)
VQA_I = (
    "Instructions: You are a helpful medical assistant. The following are questions about "
    "medical knowledge. Solve them in a step-by-step fashion, referring to authoritative "
    "sources as needed.\n"
)
PAD_OPTIONS = [
    "Nevus",
    "Basal Cell Carcinoma",
    "Squamous Cell Carcinoma",
    "Actinic Keratosis",
    "Seborrheic Keratosis",
    "Melanoma",
]
CBIS_OPTIONS = ["BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT"]
HISTORY_51 = [
    ("Age", "51"),
    ("Gender", "female"),
    ("Smoke", "false"),
    ("Drink", "false"),
    ("Family skin cancer history", "true"),
    ("Family any cancer history", "false"),
    ("Lesion region", "back"),
    ("Lesion itch", "false"),
    ("Lesion grew", "false"),
    ("Lesion bled", "false"),
    ("Lesion elevation", "false"),
    ("Fitzpatrick scale", "1.0"),
    ("Diameters (mm)", "[12.0, 8.0]"),
]
HISTORY_39 = [
    ("Age", "39"),
    ("Gender", "unknown"),
    ("Smoke", "unknown"),
    ("Drink", "unknown"),
    ("Family skin cancer history", "unknown"),
    ("Family any cancer history", "unknown"),
    ("Lesion region", "neck"),
    ("Lesion itch", "false"),
    ("Lesion grew", "true"),
    ("Lesion bled", "false"),
    ("Lesion elevation", "true"),
    ("Fitzpatrick scale", "unknown"),
    ("Diameters (mm)", "[unknown, unknown]"),
]


def qa(id_, question, options, answer_idx):
  return {
      "id": id_,
      "question": question,
      "options": options,
      "answer_idx": answer_idx,
      "answer": options[answer_idx],
  }


def vqa(id_, question, answer, image, answer_type="OPEN"):
  return {
      "id": id_,
      "image_path": f"/data/{image}.jpg",
      "question": question,
      "answer": answer,
      "answer_type": answer_type,
      "lang": "en",
  }


# (task, query record, exemplar records, expected prompt, expected target)
GOLDEN = [
    (
        "medmcqa",
        qa(
            "q",
            "Chronic urethral obstruction due to benign prismatic hyperplasia can lead to the "
            "following change in kidney parenchyma",
            ["Hyperplasia", "Hyperophy", "Atrophy", "Dyplasia"],
            2,
        ),
        [
            qa(
                "e1",
                "Which of the following is an intermediate-acting local anaesthetic which is an "
                "amino amide causing methemoglobinemia?",
                ["Procaine", "Prilocaine", "Etidocaine", "Ropivacaine"],
                1,
            ),
            qa(
                "e2",
                "Which of the following is the most likely embryologic mechanism responsible for "
                "Hirschsprung disease?",
                [
                    "Failure of neural crest cells to migrate into the walls of the " "colon",
                    "Incomplete separation of the cloaca",
                    "Failure of recanalization of the colon",
                    "Defective rotation of the hindgut",
                ],
                0,
            ),
        ],
        QA_I
        + "Question: Which of the following is an intermediate-acting local anaesthetic which is an "
        "amino amide causing methemoglobinemia?\n(A) Procaine (B) Prilocaine (C) Etidocaine "
        "(D) Ropivacaine\nAnswer: Prilocaine.\n"
        "Question: Which of the following is the most likely embryologic mechanism responsible for "
        "Hirschsprung disease?\n(A) Failure of neural crest cells to migrate into the walls of the "
        "colon (B) Incomplete separation of the cloaca (C) Failure of recanalization of the colon "
        "(D) Defective rotation of the hindgut\nAnswer: Failure of neural crest cells to migrate into "
        "the walls of the colon.\n"
        "Question: Chronic urethral obstruction due to benign prismatic hyperplasia can lead to the "
        "following change in kidney parenchyma\n(A) Hyperplasia (B) Hyperophy (C) Atrophy "
        "(D) Dyplasia\nAnswer:",
        "Atrophy.",
    ),
    (
        "medqa",
        qa(
            "q",
            "Which is the most likely cause?",
            ["Sepsis", "Thromboembolism", "Trauma", "Drugs"],
            1,
        ),
        [
            qa("e1", "Next step?", ["CT", "MRI", "X-ray", "Wait"], 3),
            qa("e2", "Diagnosis?", ["Flu", "Cold", "Asthma", "GERD"], 2),
        ],
        QA_I + "Question: Next step?\n(A) CT (B) MRI (C) X-ray (D) Wait\nAnswer: Wait.\n"
        "Question: Diagnosis?\n(A) Flu (B) Cold (C) Asthma (D) GERD\nAnswer: Asthma.\n"
        "Question: Which is the most likely cause?\n(A) Sepsis (B) Thromboembolism (C) Trauma "
        "(D) Drugs\nAnswer:",
        "Thromboembolism.",
    ),
    (
        "pubmedqa",
        {
            "id": "1",
            "question": "Does X cause Y?",
            "context": "We studied X.\n\nY followed.",
            "contexts": [],
            "labels": [],
            "options": ["yes", "no", "maybe"],
            "answer_idx": 0,
            "answer": "yes",
            "long_answer": "",
        },
        [
            {
                "id": "2",
                "question": "Is Z safe?",
                "context": "Z was given.",
                "contexts": [],
                "labels": [],
                "options": ["yes", "no", "maybe"],
                "answer_idx": 2,
                "answer": "maybe",
                "long_answer": "",
            },
            {
                "id": "3",
                "question": "Does W help?",
                "context": "W failed.",
                "contexts": [],
                "labels": [],
                "options": ["yes", "no", "maybe"],
                "answer_idx": 1,
                "answer": "no",
                "long_answer": "",
            },
        ],
        "Instructions: The following are multiple choice questions about medical research. Determine "
        "the answer to the question given the context of the abstract. Output a single option from "
        "the three options as the final answer.\n"
        "Context: Z was given.\nQuestion: Is Z safe?\n(A) yes (B) no (C) maybe\nAnswer: maybe.\n"
        "Context: W failed.\nQuestion: Does W help?\n(A) yes (B) no (C) maybe\nAnswer: no.\n"
        "Context: We studied X.\n\nY followed.\nQuestion: Does X cause Y?\n(A) yes (B) no (C) maybe\n"
        "Answer:",
        "yes.",
    ),
    (
        "mimic_iii",
        {
            "id": "7",
            "findings": "there is an intraparenchymal hemorrhage in the right cerebellar "
            "hemisphere measuring 1.7 cm.",
            "impression": "1.7-cm right cerebellar parenchymal " "hemorrhage",
            "modality": "CT",
            "anatomy": "head",
            "description": "CT HEAD",
        },
        [],
        "Instructions: You are a helpful radiology assistant. The following are questions about "
        "radiology reports. Summarize the findings in the report into diagnostic statements.\n"
        "Given the findings: there is an intraparenchymal hemorrhage in the right cerebellar "
        "hemisphere measuring 1.7 cm. Q: Summarize the findings.\nA:",
        "1.7-cm right cerebellar parenchymal hemorrhage.",
    ),
    (
        "vqa_rad",
        vqa("q", "What cut of the body is this image?", "Axial", "a"),
        [vqa("e", "Can you diagnose a pericardial effusion from this image?", "No", "b", "CLOSED")],
        VQA_I + "Given <img>. Q: Can you diagnose a pericardial effusion from this image? (closed "
        "domain)\nA: No.\n"
        "Given <img>. Q: What cut of the body is this image? (open domain)\nA:",
        "Axial.",
    ),
    (
        "slake",
        vqa("q", "Which part of the body does this image belong to?", "Brain", "a"),
        [vqa("e", "Is the lung healthy?", "No", "b")],
        VQA_I + "Given <img>. Q: Is the lung healthy?\nA: No.\n"
        "Given <img>. Q: Which part of the body does this image belong to?\nA:",
        "Brain.",
    ),
    (
        "path_vqa",
        vqa(
            "q",
            "What is there of large numbers of macrophages within the alveolar spaces?",
            "accumulation of large numbers of macrophage",
            "a",
        ),
        [vqa("e", "What is present ?", "Abdomen", "b")],
        VQA_I + "Given <img>. Q: What is present ? (other)\nA: Abdomen.\n"
        "Given <img>. Q: What is there of large numbers of macrophages within the alveolar spaces? "
        "(other)\nA:",
        "accumulation of large numbers of macrophage.",
    ),
    (
        "mimic_cxr_report",
        {
            "id": "d1",
            "image_path": "/x/d1.jpg",
            "study_id": "s1",
            "view": "PA",
            "indication": "History m with malaise pneumonia",
            "findings": "There is no pneumothorax.",
        },
        [
            {
                "id": "d2",
                "image_path": "/x/d2.jpg",
                "study_id": "s2",
                "view": "LATERAL",
                "indication": "Amiodarone routine surveillance.",
                "findings": "Normal lung volumes.",
            }
        ],
        "Instructions: You are a helpful radiology assistant. Describe what lines, tubes, and devices "
        "are present and each of their locations. Describe if pneumothorax is present; if present, "
        "describe size on each side. Describe if pleural effusion is present; if present, describe "
        "amount on each side. Describe if lung opacity (atelectasis, fibrosis, consolidation, "
        "infiltrate, lung mass, pneumonia, pulmonary edema) is present; if present, describe kinds and "
        "locations. Describe the cardiac silhouette size. Describe the width and contours of the "
        "mediastinum. Describe if hilar enlargement is present; if enlarged, describe side. Describe "
        "what fractures or other skeletal abnormalities are present.\n"
        "Given the LATERAL view X-ray image <img>. Reason for the study: Amiodarone routine "
        "surveillance.\nQ: Describe the findings in the image following the instructions.\n"
        "A: Normal lung volumes.\n"
        "Given the PA view X-ray image <img>. Reason for the study: History m with malaise "
        "pneumonia.\nQ: Describe the findings in the image following the instructions.\nA:",
        "There is no pneumothorax.",
    ),
    (
        "mimic_cxr_classification",
        {
            "id": "d1/cardiomegaly",
            "image_path": "/x/d1.jpg",
            "study_id": "s1",
            "view": "AP",
            "condition": "cardiomegaly",
            "options": ["No", "Yes"],
            "label": 1,
            "answer": "Yes",
        },
        [
            {
                "id": "d2/cardiomegaly",
                "image_path": "/x/d2.jpg",
                "study_id": "s2",
                "view": "AP",
                "condition": "cardiomegaly",
                "options": ["No", "Yes"],
                "label": 1,
                "answer": "Yes",
            }
        ],
        "Instructions: You are a helpful radiology assistant. The following are questions about "
        "findings in chest X-ray in different views. Identify if a specific type of abnormality is "
        "shown in the X-ray.\n"
        "Given the AP view X-ray image <img>. Q: Is cardiomegaly indicated by the image? (A) No "
        "(B) Yes\nA: Yes.\n"
        "Given the AP view X-ray image <img>. Q: Is cardiomegaly indicated by the image? (A) No "
        "(B) Yes\nA:",
        "Yes.",
    ),
    (
        "pad_ufes_20",
        {
            "id": "p2",
            "image_path": "/x/p2.png",
            "history": HISTORY_39,
            "options": PAD_OPTIONS,
            "label": 0,
            "answer": "Nevus",
        },
        [
            {
                "id": "p1",
                "image_path": "/x/p1.png",
                "history": HISTORY_51,
                "options": PAD_OPTIONS,
                "label": 1,
                "answer": "Basal Cell Carcinoma",
            }
        ],
        "Instructions: You are a helpful dermatology assistant. The following are questions about "
        "skin lesions. Categorize the skin lesions into the most likely class given the patient "
        "history.\n"
        "Given <img>. Patient History: Age: 51, Gender: female, Smoke: false, Drink: false, Family "
        "skin cancer history: true, Family any cancer history: false, Lesion region: back, Lesion "
        "itch: false, Lesion grew: false, Lesion bled: false, Lesion elevation: false, Fitzpatrick "
        "scale: 1.0, Diameters (mm): [12.0, 8.0].\n"
        "Q: Which of the following is the most likely diagnosis of the patient's skin lesion?\n"
        "(A) Nevus (B) Basal Cell Carcinoma (C) Squamous Cell Carcinoma (D) Actinic Keratosis "
        "(E) Seborrheic Keratosis (F) Melanoma\nA: Basal Cell Carcinoma.\n"
        "Given <img>. Patient History: Age: 39, Gender: unknown, Smoke: unknown, Drink: unknown, "
        "Family skin cancer history: unknown, Family any cancer history: unknown, Lesion region: "
        "neck, Lesion itch: false, Lesion grew: true, Lesion bled: false, Lesion elevation: true, "
        "Fitzpatrick scale: unknown, Diameters (mm): [unknown, unknown].\n"
        "Q: Which of the following is the most likely diagnosis of the patient's skin lesion?\n"
        "(A) Nevus (B) Basal Cell Carcinoma (C) Squamous Cell Carcinoma (D) Actinic Keratosis "
        "(E) Seborrheic Keratosis (F) Melanoma\nA:",
        "Nevus.",
    ),
    (
        "vindr_mammo",
        {
            "id": "m1",
            "image_path": "/x/m1.dicom",
            "laterality": "R",
            "view": "MLO",
            "options": ["1", "2", "3", "4", "5"],
            "label": 2,
            "answer": "3",
        },
        [
            {
                "id": "m2",
                "image_path": "/x/m2.dicom",
                "laterality": "L",
                "view": "CC",
                "options": ["1", "2", "3", "4", "5"],
                "label": 3,
                "answer": "4",
            }
        ],
        "Instructions: You are a helpful medical assistant. The following are questions about "
        "mammography reading. Provide a breast-level assessment based on the BI-RADS categories.\n"
        "Given mammogram image <img>. Image view: left craniocaudal Q: What is the most likely breast "
        "BI-RADS score? (A) 1 (B) 2 (C) 3 (D) 4 (E) 5\nA: 4.\n"
        "Given mammogram image <img>. Image view: right mediolateral oblique Q: What is the most "
        "likely breast BI-RADS score? (A) 1 (B) 2 (C) 3 (D) 4 (E) 5\nA:",
        "3.",
    ),
    (
        "cbis_ddsm_mass",
        {
            "id": "c1",
            "image_path": "/x/c1.dcm",
            "view": "MLO",
            "abnormality": "mass",
            "laterality": "LEFT",
            "options": CBIS_OPTIONS,
            "label": 0,
            "answer": "BENIGN",
        },
        [],
        "Given mammogram image <img>. Image view: MLO Q: Which of the following is the most likely "
        "type of the patient's breast mass? (A) BENIGN (B) BENIGN_WITHOUT_CALLBACK (C) MALIGNANT\nA:",
        "BENIGN.",
    ),
    (
        "cbis_ddsm_calc",
        {
            "id": "c2",
            "image_path": "/x/c2.dcm",
            "view": "CC",
            "abnormality": "calcification",
            "laterality": "RIGHT",
            "options": CBIS_OPTIONS,
            "label": 2,
            "answer": "MALIGNANT",
        },
        [],
        "Given mammogram image <img>. Image view: CC Q: Which of the following is the most likely "
        "type of the patient's breast calcification? (A) BENIGN (B) BENIGN_WITHOUT_CALLBACK "
        "(C) MALIGNANT\nA:",
        "MALIGNANT.",
    ),
    (
        "precisionfda",
        {
            "id": "f:1",
            "image": None,
            "options": ["0", "1", "2"],
            "label": 1,
            "answer": "1",
            "variant_type": "SNP",
            "locus": "chr20:1",
        },
        [],
        "Instructions: You are a helpful genetic assistant. The following are questions about variant "
        "calling. Identify the number of copies of the putative variant in pileup images.\n"
        "Given <img>. Q: How many copies of this putative variant are shown in the middle of the "
        "image? (A) 0 (B) 1 (C) 2 A:",
        "1.",
    ),
]


def test_golden_covers_all_14_tasks():
  assert sorted(t for t, *_ in GOLDEN) == sorted(prompts.TEMPLATES)
  assert len(prompts.TEMPLATES) == 14


@pytest.mark.parametrize(
    "task,record,exemplars,expected,target", GOLDEN, ids=[g[0] for g in GOLDEN]
)
def test_golden_prompt(task, record, exemplars, expected, target):
  template = prompts.TEMPLATES[task]
  assert template.num_shots == len(exemplars)
  prompt = template.render(record, exemplars)
  assert prompt.text() == expected
  assert prompt.target == target
  # The query's <img> is the one IMAGE segment; exemplar <img> stays inside exemplar text.
  images = [s for s in prompt.segments() if s.role == prompts.Role.IMAGE]
  assert [s.text for s in images] == (["<img>"] if template.has_image else [])
  if template.has_image:
    assert all("<img>" in e for e in prompt.exemplars)
  assert prompt.segments()[-1].role == prompts.Role.CUE


def test_golden_vindr_bilateral_view():
  """Table A.9's VinDr-Mammo prompt, typed from the paper: "bilateral craniocaudal" is what a
  record of the bilateral option (both breasts' CC images side by side) renders."""
  record = {
      "id": "s1/CC",
      "image_paths": ["/x/r.dicom", "/x/l.dicom"],
      "laterality": "B",
      "view": "CC",
      "options": ["1", "2", "3", "4", "5"],
      "label": 2,
      "answer": "3",
  }
  exemplar = dict(record, id="s2/CC", image_paths=["/x/r2.dicom", "/x/l2.dicom"], answer="4")
  prompt = prompts.TEMPLATES["vindr_mammo"].render(record, [exemplar])
  assert prompt.text() == (
      "Instructions: You are a helpful medical assistant. The following are questions about "
      "mammography reading. Provide a breast-level assessment based on the BI-RADS categories.\n"
      "Given mammogram image <img>. Image view: bilateral craniocaudal Q: What is the most likely "
      "breast BI-RADS score? (A) 1 (B) 2 (C) 3 (D) 4 (E) 5\nA: 4.\n"
      "Given mammogram image <img>. Image view: bilateral craniocaudal Q: What is the most likely "
      "breast BI-RADS score? (A) 1 (B) 2 (C) 3 (D) 4 (E) 5\nA:"
  )
  assert prompt.target == "3."


def test_golden_vqa_question_types():
  """Each dataset's answer type → the suffix of the paper's Table A.10 examples."""
  closed = vqa("q", "Is there a fracture?", "yes", "a", "CLOSED")
  opened = vqa("q", "What organ is this?", "Liver", "a", "OPEN ")  # stray space, as released
  render = lambda task, r: prompts.TEMPLATES[task].query(r)[2].text  # noqa: E731
  assert render("vqa_rad", closed) == ". Q: Is there a fracture? (closed domain)\n"
  assert render("vqa_rad", opened) == ". Q: What organ is this? (open domain)\n"
  assert render("path_vqa", closed) == ". Q: Is there a fracture? (yes/no)\n"
  assert render("path_vqa", opened) == ". Q: What organ is this? (other)\n"
  assert render("slake", closed) == ". Q: Is there a fracture?\n"  # the paper's Slake: none


def test_exemplars_match_the_querys_condition_and_view():
  pool = [
      {"id": f"r{i}", "study_id": f"s{i}", "condition": c, "view": v}
      for i, (c, v) in enumerate(
          [(c, v) for c in ("edema", "cardiomegaly") for v in ("AP", "PA", "LATERAL")] * 5
      )
  ]
  template = prompts.TEMPLATES["mimic_cxr_classification"]
  assert template.match_keys == ("condition", "view")
  for query in pool:
    (pick,) = prompts.choose_exemplars(query, pool, 1, "t", template.match_keys)
    assert (pool[pick]["condition"], pool[pick]["view"]) == (query["condition"], query["view"])
    assert pool[pick]["id"] != query["id"]
  # No record of the query's view: any eligible record is drawn instead.
  lonely = {"id": "x", "study_id": "sx", "condition": "edema", "view": "LL"}
  assert len(prompts.choose_exemplars(lonely, pool, 1, "t", template.match_keys)) == 1
  assert prompts.TEMPLATES["vindr_mammo"].match_keys == ("view",)
  assert prompts.TEMPLATES["mimic_cxr_report"].match_keys == ("view",)


def test_shots_follow_the_paper():
  shots = {t: tpl.num_shots for t, tpl in prompts.TEMPLATES.items()}
  assert shots == {
      "medqa": 2,
      "medmcqa": 2,
      "pubmedqa": 2,
      "mimic_iii": 0,
      "vqa_rad": 1,
      "slake": 1,
      "path_vqa": 1,
      "mimic_cxr_report": 1,
      "mimic_cxr_classification": 1,
      "pad_ufes_20": 1,
      "vindr_mammo": 1,
      "cbis_ddsm_mass": 0,
      "cbis_ddsm_calc": 0,
      "precisionfda": 0,
  }


def test_target_has_exactly_one_period():
  assert prompts.with_period("No acute process.") == "No acute process."
  assert prompts.with_period(" Axial ") == "Axial."
  assert prompts.without_period("cm.") == "cm"


def _records(n, study=None):
  return [{"id": f"r{i}", "study_id": study(i) if study else None} for i in range(n)]


def test_exemplars_deterministic_never_self_nor_same_study():
  pool = _records(50, study=lambda i: f"s{i // 2}")  # two images per study
  for rec in pool:
    picks = prompts.choose_exemplars(rec, pool, 2, salt="t")
    assert picks == prompts.choose_exemplars(rec, pool, 2, salt="t")
    assert len(set(picks)) == 2
    for i in picks:
      assert pool[i]["id"] != rec["id"]
      assert pool[i]["study_id"] != rec["study_id"]
  # Different ids draw different exemplars (not one fixed pair for everybody).
  assert len({tuple(prompts.choose_exemplars(r, pool, 2, salt="t")) for r in pool}) > 10


def test_exemplars_small_pool():
  pool = _records(2)
  assert prompts.choose_exemplars(pool[0], pool, 2, salt="t") == [1]  # only one eligible
  assert prompts.choose_exemplars(pool[0], pool[:1], 1, salt="t") == []


def test_exemplar_pool_bounded_and_stable():
  records = _records(100)
  pool = prompts.exemplar_pool(records, 10, salt="t")
  assert len(pool) == 10 and pool == prompts.exemplar_pool(list(reversed(records)), 10, "t")


def test_postprocessors():
  assert postprocessors.normalize(" Atrophy. ") == "Atrophy"
  assert postprocessors.normalize(b"a  b\n c.") == "a b c"
  assert postprocessors.normalize_lower("Yes.") == "yes"
  opt = postprocessors.OptionPostprocessor(["BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT"])
  assert opt("malignant.") == "MALIGNANT"
  assert opt("(B)") == "BENIGN_WITHOUT_CALLBACK"
  assert opt("(C) MALIGNANT.") == "MALIGNANT"
  assert opt("cancer") == "cancer"
