"""Speech -> mouth motion: a synthetic multi-voice corpus, a bounded-look-ahead model, its training.

:mod:`avatar3d.motion.corpus` builds the corpus (espeak-ng voices, pocketsphinx
alignment, the synthetic subject's own viseme curves as ground truth),
:mod:`avatar3d.motion.model` is the model (``MotionModel.predict``), and
:mod:`avatar3d.motion.train` trains it (``pretrain``).
"""
from __future__ import annotations
