"""Progress bars for long work: tqdm, silenceable.

A bar is shown when the caller wants one (``enabled``), ``TQDM_DISABLE`` is not set (``filmweaver -q``
sets it) and the output is a terminal: a piped or logged run gets no bars (tqdm's ``disable=None``).
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, off unless ``enabled``, off under ``TQDM_DISABLE``, off off a terminal."""
    quiet = os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")
    return tqdm(iterable, disable=True if (quiet or not enabled) else None, **kwargs)


def shows_progress(enabled: bool = True) -> bool:
    """Whether :func:`progress_bar` would draw: for libraries that take a plain on/off switch."""
    quiet = os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")
    return enabled and not quiet and sys.stderr.isatty()
