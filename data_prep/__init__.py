"""The video-to-dataset pipeline (`avatar3d prep`), one module per stage.

Import the stage modules directly (``from data_prep.decode import decode``);
nothing is re-exported here, so the ``decode`` function never shadows the
``data_prep.decode`` module and importing one stage does not load the others.

* :mod:`data_prep.decode` - any clip -> ``frames.mp4`` (fixed fps, square crop,
  upright) + ``audio.wav`` (16 kHz mono) + ``decode.json``.
* :mod:`data_prep.landmarks` - ``frames.mp4`` -> ``landmarks.npy`` [N,478,3]
  + ``landmark_flags.npy`` (detected / interpolated / excluded) + ``landmarks.json``.
* :mod:`data_prep.track` - ``landmarks.npy`` -> ``tracking.npz`` (face-model fit).
* :mod:`data_prep.transforms` - ``tracking.npz`` -> ``transforms_train/val.json``.
* :mod:`data_prep.segment` - frames + landmarks -> ``parsing.npz`` (0 bg, 1 head, 2 neck/torso, 3 mouth).
* :mod:`data_prep.background` - frames + parsing -> ``background.png``.
* :mod:`data_prep.audio_features` - ``audio.wav`` -> ``audio_features.npz``.
* :mod:`data_prep.pipeline` - runs them in order with ``manifest.json`` (skip / resume).
"""
