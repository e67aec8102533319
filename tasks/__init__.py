"""MultiMedBench as SeqIO tasks. ``import tasks`` registers the 14 tasks ``multimedbench_<task>``
and the mixtures ``multimedbench``, ``multimedbench_eval``, ``multimedbench_demo``,
``multimedbench_without_cxr_classification`` (Table 6's ablation), and the paper's
evaluation-only experiments ``EXPERIMENT_NAMES`` (zero-shot tuberculosis with and without chain
of thought, MIMIC-III's rare pairs, two-view reports) (see tasks/multimedbench.py; paper
settings: 256 image tokens at 224×224, inputs 966, targets 256).

Registration reads no data and no vocabulary file: datasets are located, and the SentencePiece
model ($MEDPALM_SPM_MODEL) loaded, when a dataset is first built.
"""

from tasks import multimedbench as _multimedbench

TASK_NAMES = tuple(_multimedbench.register_all())
EXPERIMENT_NAMES = tuple(_multimedbench.experiment_names())
MIXTURE_NAMES = (
    "multimedbench",
    "multimedbench_eval",
    "multimedbench_demo",
    "multimedbench_without_cxr_classification",
)
