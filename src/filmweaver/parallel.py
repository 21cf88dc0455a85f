"""Everything that spans several processes: one story on several GPUs under ``torchrun``, two ways,
and the sharding of a benchmark.

- context parallelism (:class:`ContextParallel`, enabled on each transformer with
  :meth:`filmweaver.backbone.wan.ContextWanTransformer.enable_context_parallel`): each forward splits
  its tokens over the ranks (Ulysses or ring attention);
- CFG parallelism (:class:`CFGParallel`, :meth:`filmweaver.sampler.FlowMatchSampler.enable_cfg_parallel`):
  two ranks, the conditional branch of classifier-free guidance on one and the unconditional on the
  other, one all-gather of the velocities a step;
- benchmark sharding (:func:`shard_from_env`, :func:`barrier`): each rank takes its share of the
  (story, method) pairs;
- a pool of worker processes on one machine (:func:`process_pool`: rendering, curation).

Every rank of a split story runs the same engine with the same seeds, so all ranks hold identical
latents after every step. Rank 0 writes the project; the others write to a scratch directory that is
removed at the end.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F


def init_distributed(device: str, context_parallel: str | None = None, cfg_parallel: bool = False,
                     flag: str | None = None) -> tuple[str, int]:
    """Initialise the process group from torchrun's environment (NCCL on CUDA, gloo on CPU) for
    ``context_parallel`` (any number of ranks) or ``cfg_parallel`` (two ranks), or what the option
    ``flag`` names (any number of ranks), and pin this rank's GPU.
    Returns ``(device for this rank, rank)``. A combination, a start outside torchrun or a CFG split over
    other than two ranks is a clear error (ValueError / RuntimeError)."""
    if context_parallel and cfg_parallel:
        raise ValueError("--context-parallel and --cfg-parallel do not combine yet: choose one")
    flag = flag or ("--cfg-parallel" if cfg_parallel else f"--context-parallel {context_parallel}")
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


class ContextParallel:
    """One transformer's tokens split over the ranks of the default process group.

    Each rank embeds all tokens, keeps its share of the sequence (and of the RoPE tables and per-token
    modulation) through the blocks, and self-attention exchanges what it needs through diffusers'
    context-parallel attention (``ContextParallelConfig``): ``"ulysses"`` (all-to-all over heads; any
    token count) or ``"ring"`` (keys/values passed around; needs an attention backend that returns
    log-sum-exp, e.g. ``_native_cudnn`` or ``flash``, and token counts divisible by the degree). The
    generated tokens are gathered again before the output head.
    """

    def __init__(self, transformer, mode: str = "ulysses", degree: int | None = None, device: torch.device | None = None):
        from diffusers import ContextParallelConfig, ParallelConfig
        from torch.distributed.device_mesh import init_device_mesh

        if not dist.is_initialized():
            raise RuntimeError("context parallelism needs torch.distributed initialised (launch with torchrun)")
        degree = degree or dist.get_world_size()
        if mode == "ulysses":
            heads = transformer.config.num_attention_heads
            if heads % degree:
                raise ValueError(f"ulysses degree {degree} must divide the {heads} attention heads")
            cp = ContextParallelConfig(ulysses_degree=degree, ulysses_anything=True)
        elif mode == "ring":
            cp = ContextParallelConfig(ring_degree=degree)
        else:
            raise ValueError(f"context parallel mode must be 'ulysses' or 'ring', got {mode!r}")
        # What ``ModelMixin.enable_parallelism`` sets up, minus its input-splitting hooks (the forward
        # splits the tokens itself) and on the model's own device type (it assumes an accelerator)
        config = ParallelConfig(context_parallel_config=cp)
        device = device or transformer.device
        mesh = init_device_mesh(device.type, mesh_shape=cp.mesh_shape, mesh_dim_names=cp.mesh_dim_names)
        config.setup(dist.get_rank(), dist.get_world_size(), device, mesh=mesh)
        transformer._parallel_config = config
        for module in transformer.modules():
            proc = getattr(module, "processor", None)
            if proc is not None and hasattr(proc, "_parallel_config"):
                proc._parallel_config = config
        self.group = dist.group.WORLD
        self.mode = mode

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's share of ``x`` along the token dimension ``dim`` (first ranks one longer)."""
        return torch.tensor_split(x, dist.get_world_size(self.group), dim=dim)[dist.get_rank(self.group)]

    def gather(self, h: torch.Tensor, n_total: int) -> torch.Tensor:
        """``[B, n_local, D]`` shards of every rank -> ``[B, n_total, D]`` in token order."""
        world = dist.get_world_size(self.group)
        sizes = [t.shape[1] for t in torch.tensor_split(torch.empty(1, n_total), world, dim=1)]
        pad = sizes[0] - h.shape[1]
        if pad:
            h = F.pad(h, (0, 0, 0, pad))
        g = funcol.all_gather_tensor(h.contiguous(), 1, self.group)
        g = g.wait() if hasattr(g, "wait") else g
        return torch.cat([c[:, :n] for c, n in zip(g.chunk(world, dim=1), sizes, strict=True)], dim=1)

    def split_inputs(self, hidden: torch.Tensor, tproj: torch.Tensor, rotary: tuple, per_token: bool):
        """Shard tokens ``[B, N, D]``, per-token modulation and RoPE tables."""
        world = dist.get_world_size(self.group)
        if self.mode == "ring" and hidden.shape[1] % world:
            raise ValueError(f"ring context parallelism needs a token count divisible by {world}, got "
                             f"{hidden.shape[1]} (use 'ulysses', which takes any count)")
        return (self.shard(hidden, 1), self.shard(tproj, 1) if per_token else tproj,
                tuple(self.shard(r, 1) for r in rotary))


def gather_cfg_branches(mine: torch.Tensor, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """CFG parallelism's one exchange a step: this rank's branch ``[B, ...]`` all-gathered over the two
    ranks of ``group`` -> ``(rank 0's, rank 1's)``, the conditional and the unconditional velocities."""
    both = [torch.empty_like(mine) for _ in range(2)]
    dist.all_gather(both, mine.contiguous(), group=group)
    return both[0], both[1]


class CFGParallel:
    """Classifier-free guidance split over the two ranks of ``group`` (default: the whole world, under
    ``torchrun --nproc_per_node 2``): rank 0 runs the conditional forward, rank 1 the unconditional one,
    and one all-gather of the two velocities a step gives both ranks the same guided step."""

    def __init__(self, group=None):
        size = dist.get_world_size(group)
        if size != 2:
            raise ValueError(f"CFG parallelism splits two branches over two ranks; this group has {size}")
        self.group = group if group is not None else dist.group.WORLD

    def velocities(self, velocity, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                   negative_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v_cond, v_uncond)``, each ``[B, C, F, h, w]``, with one branch computed on each rank."""
        mine = velocity(latents, t, text if dist.get_rank(self.group) == 0 else negative_text)
        return gather_cfg_branches(mine, self.group)


def shard_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) under ``torchrun`` / ``accelerate launch``; (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def process_pool(workers: int, **kwargs) -> ProcessPoolExecutor:
    """``workers`` processes started fresh (spawned), never forked: a fork of a process whose torch or
    OpenMP threads hold a lock at that moment inherits the lock and waits on it forever (a hang that
    comes and goes with the machine's load), and a forked child cannot use CUDA once the parent has."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), **kwargs)
