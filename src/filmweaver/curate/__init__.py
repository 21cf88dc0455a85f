"""From raw footage to multi-shot training data: ``filmweaver curate`` (:func:`curate`).

Stages, one module each: :mod:`~filmweaver.curate.video` (PyAV decoding), :mod:`~filmweaver.curate.shots`
(shot boundaries), :mod:`~filmweaver.curate.filters`, :mod:`~filmweaver.curate.scenes` (clustering),
:mod:`~filmweaver.curate.captions`, :mod:`~filmweaver.curate.dataset` (WebDataset shards, provenance),
:mod:`~filmweaver.curate.report`; :mod:`~filmweaver.curate.pipeline` runs them per video.
"""

from filmweaver.curate.config import CurateConfig
from filmweaver.curate.dataset import read_samples
from filmweaver.curate.pipeline import curate, curate_video

__all__ = ["CurateConfig", "curate", "curate_video", "read_samples"]
