"""One story on several GPUs under ``torchrun``, two ways:

- context parallelism (:meth:`filmweaver.backbone.wan.ContextWanTransformer.enable_context_parallel`):
  each transformer forward splits its tokens over the ranks (Ulysses or ring attention);
- CFG parallelism (:meth:`filmweaver.sampler.FlowMatchSampler.enable_cfg_parallel`): two ranks, the
  conditional branch of classifier-free guidance on one and the unconditional on the other, one
  all-gather of the velocities a step.

Every rank runs the same engine with the same seeds, so all ranks hold identical latents after every
step. Rank 0 writes the project; the others write to a scratch directory that is removed at the end.
"""

from __future__ import annotations

import os

import torch


def init_distributed(device: str, context_parallel: str | None = None, cfg_parallel: bool = False) -> tuple[str, int]:
    """Initialise the process group from torchrun's environment (NCCL on CUDA, gloo on CPU) for
    ``context_parallel`` (any number of ranks) or ``cfg_parallel`` (two ranks), and pin this rank's GPU.
    Returns ``(device for this rank, rank)``. A combination, a start outside torchrun or a CFG split over
    other than two ranks is a clear error (ValueError / RuntimeError)."""
    import torch.distributed as dist

    if context_parallel and cfg_parallel:
        raise ValueError("--context-parallel and --cfg-parallel do not combine yet: choose one")
    flag = "--cfg-parallel" if cfg_parallel else f"--context-parallel {context_parallel}"
    if "RANK" not in os.environ:
        raise RuntimeError(f"{flag} runs under torchrun: torchrun --nproc_per_node N -m filmweaver.cli COMMAND ... {flag}")
    cuda = device.startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cfg_parallel and dist.get_world_size() != 2:
        raise ValueError(f"--cfg-parallel splits guidance's two branches over two ranks, not {dist.get_world_size()}: "
                         "torchrun --nproc_per_node 2")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return device, dist.get_rank()


def enable_context_parallel(models, mode: str) -> None:
    """Split the tokens of every transformer (both experts of Wan2.2, the first-shot model) over the ranks."""
    for expert in models.experts():
        expert.enable_context_parallel(mode)
