"""Model CPU offload for GPUs too small to hold every component at once.

``FilmModels.enable_model_offload(device)`` keeps the large modules (UMT5 text encoder, the
transformer or each Wan2.2 expert, the VAE) in CPU memory and moves one at a time to ``device`` when it
is called, evicting the one there before (what diffusers' ``enable_model_cpu_offload`` does for a
pipeline, but in the order the engine actually calls them: text, transformer, VAE, transformer...).
The small CLIP embedder stays on ``device``.

The hook is an accelerate ``ModelHook`` on each module's ``forward``; diffusers' VAE ``encode`` /
``decode`` call it too (``apply_forward_hook``). The wrappers (:class:`LatentCodec`,
:class:`WanPromptEncoder`, :class:`ContextWanTransformer`) report the execution device, so the engine
puts its tensors there.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from accelerate.hooks import ModelHook, add_hook_to_module
from accelerate.utils import send_to_device


class ModelOffload:
    """One resident module on ``device`` at a time; the others wait in CPU memory."""

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self.resident: nn.Module | None = None
        self.loads = 0  # moves to the device (a measure of traffic; tests and logs)

    def attach(self, module: nn.Module) -> None:
        module.to("cpu")
        add_hook_to_module(module, _BringToDevice(self), append=True)
        module._filmweaver_offload = self

    def bring(self, module: nn.Module) -> None:
        if self.resident is module:
            return
        if self.resident is not None:
            self.resident.to("cpu")
        module.to(self.device)
        self.resident = module
        self.loads += 1


class _BringToDevice(ModelHook):
    def __init__(self, manager: ModelOffload):
        self.manager = manager

    def pre_forward(self, module, *args, **kwargs):
        self.manager.bring(module)
        return send_to_device(args, self.manager.device), send_to_device(kwargs, self.manager.device)


def execution_device(module: nn.Module) -> torch.device | None:
    """The device an offloaded module runs on (None if it is not offloaded)."""
    manager = getattr(module, "_filmweaver_offload", None)
    return None if manager is None else manager.device
