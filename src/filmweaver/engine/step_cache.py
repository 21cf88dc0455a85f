"""Step caching: diffusers' FirstBlockCache and MagCache hooks on the engine's transformers.

Both skip the later transformer blocks on denoising steps where the model's output is predicted to
change little (FirstBlockCache: the first block's residual changed less than a threshold; MagCache:
the accumulated error predicted by per-step residual magnitude ratios stays under one). That changes
the film and saves time. ``mag_calibrate`` skips nothing and collects those ratios for the model and
step count (diffusers reports them through its logger when a trajectory ends), for a later ``mag``.
"""

from __future__ import annotations

import ast
import logging
import weakref
from contextlib import ExitStack
from pathlib import Path

from filmweaver.io import write_json


class StepCache:
    """The step cache of one engine: enabled on every expert's transformer, a fresh state per
    denoising trajectory (:meth:`scope`), and MagCache's calibration written where asked."""

    def __init__(self, mode: str, transformers: list, threshold: float = 0.05, num_inference_steps: int = 50,
                 mag_ratios: list[float] | None = None):
        self.mode, self.transformers = mode, transformers
        for tr in transformers:
            if tr.is_cache_enabled:
                tr.disable_cache()
            if mode == "first_block":
                from diffusers.hooks import FirstBlockCacheConfig

                tr.enable_cache(FirstBlockCacheConfig(threshold=threshold))
            elif mode in ("mag", "mag_calibrate"):
                from diffusers.hooks import MagCacheConfig

                tr.enable_cache(MagCacheConfig(
                    threshold=threshold, num_inference_steps=num_inference_steps,
                    mag_ratios=None if mode == "mag_calibrate" else list(mag_ratios), calibrate=mode == "mag_calibrate"))
        self.calibration = MagCalibration() if mode == "mag_calibrate" else None

    @classmethod
    def for_config(cls, cfg, experts: list) -> StepCache:
        """From an :class:`~filmweaver.engine.EngineConfig`, after checking that it combines with the
        rest of the setup (a ``ValueError`` names what does not)."""
        mode = cfg.step_cache
        if mode != "none":
            # both caches count denoising steps by transformer forwards and compare residuals of the
            # generated tokens from step to step
            if not cfg.sampler.batch_cfg:
                raise ValueError("step_cache needs batched CFG (sampler.batch_cfg): one forward per step")
            if any(e.context_attention == "causal" for e in experts):
                # the context pass runs the blocks too: the cache would compare unrelated residuals
                raise ValueError(f"step_cache {mode} does not combine with a causal-context model "
                                 "(its context keys/values are already reused across steps)")
            if cfg.sampler.memory_guidance_scale != 1.0:
                raise ValueError(f"step_cache {mode} does not combine with memory guidance (two forwards "
                                 "a step): pass memory_guidance_scale 1 (--memory-guidance 1)")
            if any(e.context_parallel is not None for e in experts):
                # each rank would decide on its own shard's residual, and the ranks could diverge
                raise ValueError(f"step_cache {mode} does not combine with context parallelism")
            if mode == "mag" and not cfg.step_cache_mag_ratios:
                raise ValueError("step_cache mag needs the model's magnitude ratios (step_cache_mag_ratios, "
                                 "--mag-ratios FILE): run once with --step-cache mag_calibrate, which writes "
                                 "them to the project's mag_ratios.json")
        return cls(mode, [e.transformer for e in experts], cfg.step_cache_threshold,
                   cfg.sampler.num_inference_steps, cfg.step_cache_mag_ratios)

    def scope(self, name: str) -> ExitStack:
        """A fresh cache state per denoising trajectory (chunk): residuals never cross chunks."""
        stack = ExitStack()
        if self.mode != "none":
            for tr in self.transformers:
                tr._reset_stateful_cache()  # hooks keep state across cache contexts; diffusers' pipelines reset it the same way
                stack.enter_context(tr.cache_context(name))
        return stack

    def write_calibration(self, path: str | Path) -> None:
        """``mag_calibrate``: the mean of every trajectory's calibrated ratios so far, as JSON."""
        if self.calibration is not None and self.calibration.runs:
            write_json(path, self.calibration.summary())


class MagCalibration:
    """Collects MagCache's calibrated ratios (``step_cache: mag_calibrate``) for every denoising
    trajectory. Diffusers' hook reports each trajectory's ratios through its logger when the trajectory
    ends (and then resets its state), so one handler on that logger hands them to every live
    calibration."""

    _live: weakref.WeakSet[MagCalibration] = weakref.WeakSet()
    _handler: logging.Handler | None = None

    def __init__(self):
        self.runs: list[list[float]] = []
        MagCalibration._live.add(self)
        if MagCalibration._handler is None:
            MagCalibration._handler = _MagResultsHandler()
            log = logging.getLogger("diffusers.hooks.mag_cache")
            # diffusers' loggers sit at WARNING and the results are INFO records: this logger now lets
            # INFO through to our handler alone, which passes warnings on to diffusers' own handlers
            log.setLevel(logging.INFO)
            log.propagate = False
            log.addHandler(MagCalibration._handler)

    def summary(self) -> dict:
        """The per-step mean over the trajectories of the most common length (the step count)."""
        lengths = [len(r) for r in self.runs]
        n = max(set(lengths), key=lengths.count)
        runs = [r for r in self.runs if len(r) == n]
        return {"mag_ratios": [round(sum(col) / len(col), 6) for col in zip(*runs, strict=True)],
                "num_inference_steps": n, "trajectories": len(runs)}


class _MagResultsHandler(logging.Handler):
    PREFIX = "MagCache Calibration Results:"

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            logging.getLogger("diffusers").handle(record)
            return
        msg = record.getMessage()
        if msg.startswith(self.PREFIX):
            ratios = [float(x) for x in ast.literal_eval(msg[len(self.PREFIX):].strip())]
            for calibration in MagCalibration._live:
                calibration.runs.append(ratios)
