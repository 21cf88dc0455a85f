"""filmweaver: a story script in, a consistent multi-shot film out.

The Python API is :class:`FilmPipeline` (the models) and :class:`Film` (one project): see
:mod:`filmweaver.pipeline`. Imported on first use, so that ``filmweaver --help`` stays light.
"""

__all__ = ["Film", "FilmOutput", "FilmPipeline"]


def __getattr__(name: str):
    if name in __all__:
        from filmweaver import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'filmweaver' has no attribute {name!r}")
