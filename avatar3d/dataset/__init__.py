"""The subject dataset contract: what `avatar3d prep` writes and everything downstream reads.

* :mod:`avatar3d.dataset.contract` - file names, format version, label values, the manifest and
  parsing readers (one place spells ``frames.mp4``; writers in ``data_prep`` import the names).
* :mod:`avatar3d.dataset.reader` - a prepared subject as arrays at a training resolution
  (``load_subject`` -> ``SubjectData``), with its uint8 frame/label cache.
"""
