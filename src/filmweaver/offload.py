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

``FilmModels.enable_model_offload(device, stream_blocks=True)`` goes further for GPUs that cannot hold one transformer
(a 14B expert is 28 GB in bf16): the text encoder and VAE take turns as above, and each transformer
keeps only its small parts (patch and condition embeddings, output head, context projections) on
``device`` while its blocks stay in CPU memory and are streamed in one block at a time, at every
forward (accelerate's ``cpu_offload`` on each block: the weights wait in a CPU state dict, the
parameters are meta tensors between calls). Slow (every step moves every block's weights), but the
GPU holds one block, not forty.
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


def offload_blocks(expert: nn.Module, manager: ModelOffload) -> None:
    """Keep ``expert``'s (a :class:`ContextWanTransformer`) transformer blocks in CPU memory and stream
    each to ``manager.device`` when it runs; everything else of ``expert`` moves to the device now."""
    from accelerate import cpu_offload
    from accelerate.utils import set_module_tensor_to_device

    expert.to("cpu")
    blocks = expert.transformer.blocks
    in_blocks = {id(t) for t in [*blocks.parameters(), *blocks.buffers()]}
    for name, tensor in [*expert.named_parameters(), *expert.named_buffers()]:
        if id(tensor) not in in_blocks:
            set_module_tensor_to_device(expert, name, manager.device)
    for block in blocks:
        # the block's own parameters (its modulation table) and every submodule's are hooked: the
        # block is always called as a module (ContextWanTransformer's loops), so the hooks fire
        cpu_offload(block, execution_device=manager.device)
    expert._filmweaver_offload = manager  # the execution device the engine asks for
