"""stylejax: style-aligned image generation in JAX/Flax.

Lower bounds are the versions the test suite was run against (Python 3.11 and 3.12).
No upper caps: new releases are picked up and CI tells us when one breaks.
"""
from setuptools import find_packages, setup

setup(
    name="stylejax",
    version="0.1.0",
    description="StyleDrop, StyleAR, CoTyle and InstantStyle in one JAX/Flax codebase",
    packages=find_packages(include=["stylejax", "stylejax.*"]),
    package_data={"stylejax": ["assets/*", "assets/**/*"]},
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "einops>=0.8.0",
        "ml_collections>=1.1.0",
        "absl-py>=2.1.0",
        "numpy>=2.0",
        "scipy>=1.13",  # ndimage for the structure-adherence metric (also a jax dependency)
        "pillow>=11.0",
        "tqdm>=4.66",
        "tensorflow-datasets>=4.9.10",
        "grain>=0.2.18",
        "transformers>=5.0",
        "tokenizers>=0.22",
        "safetensors>=0.5",
        "huggingface_hub>=1.0",
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    ],
    extras_require={
        # torch pinned: 2.13.0 is the CPU build the parity tests are checked against. xdist: the README's
        # test command runs two workers (XLA compiles on one core, so two workers overlap compile and run).
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "torch==2.13.0", "diffusers>=0.42"],
        "cuda": ["jax[cuda12]>=0.10.2"],
        "tpu": ["jax[tpu]>=0.10.2"],
    },
    entry_points={"console_scripts": ["stylejax=stylejax.cli:entry"]},
)
