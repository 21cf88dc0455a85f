"""Fully sharded data parallel training (``dit.fsdp``): every rank keeps a shard of each parameter, its
gradient and its optimiser moments, and gathers a transformer block's full weights only while that block
runs (PyTorch's FSDP2, ``fully_shard``, one unit per block as torchtitan shards). A Wan2.2 A14B expert is
28 GB of bfloat16 weights: on 8 GPUs each holds 3.5 GB of it instead of all of it.

What data parallelism does not need and sharding does, all here:

- :func:`shard_for_training`: each block a unit, the rest (embeddings, head, memory projections, a trained
  text encoder) one root unit; before the optimiser is made (it must see the shards);
- :func:`clip_grad_norm`: the norm over every rank's shards;
- :func:`full_tensor` / :func:`assign_full`: a parameter (or an EMA shadow, an Adam moment) as one whole
  tensor and back, for checkpoints in the same files as unsharded training writes (so a run resumes on
  another number of GPUs, sharded or not);
- :func:`optimizer_state` / :func:`load_optimizer_state`: the optimiser's state keyed by parameter name;
- :func:`gather_for_saving`: the trained weights into a plain copy of the model on the main process,
  which saves it as an unsharded run saves its model. A LoRA run on a pretrained base saves only what
  it trained (the adapter, the memory projections): its copy leaves the frozen base out (28 GB of host
  memory for an A14B expert) and only the trained tensors are gathered.

Every function that gathers is a collective: every rank calls it, at the same point.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def shard_for_training(module: nn.Module, transformers: list[nn.Module], device: torch.device,
                       keep_copy: bool, without_frozen_base: bool = False) -> nn.Module | None:
    """Shard ``module`` (the trained denoiser) over every process of the default group: each block of each
    of ``transformers`` (diffusers Wan transformers inside it) a unit, ``module`` the root (the
    embeddings, the head, the memory projections, a trained text encoder). Parameters and buffers move
    to ``device`` as they are sharded. ``keep_copy``: first keep an unsharded copy on the CPU, to
    save the trained model into (:func:`gather_for_saving`; the main process's job). Returns it, or None.
    ``without_frozen_base``: the copy's frozen parameters of ``transformers`` are placeholders on the meta
    device (no memory), for a run that saves only what it trains."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    saved = None
    if keep_copy and without_frozen_base:
        memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
                for t in transformers for p in t.parameters() if not p.requires_grad}
        saved = copy.deepcopy(module, memo)  # the memo stands in for the frozen base: it is not copied
        with torch.no_grad():
            for t in (*saved.parameters(), *saved.buffers()):
                if not t.is_meta:
                    t.data = t.data.to("cpu")
    elif keep_copy:
        module.to("cpu")  # a copy beside the model on the GPU would double its memory there
        saved = copy.deepcopy(module)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for transformer in transformers:
        for block in transformer.blocks:
            fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)  # its parameters and buffers move to the mesh's device
    return saved


def host_copy_bytes(saved: nn.Module) -> int:
    """The bytes of host memory a saving copy holds (its placeholders on the meta device hold none)."""
    return sum(t.numel() * t.element_size() for t in (*saved.parameters(), *saved.buffers()) if not t.is_meta)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole (a collective), or ``t`` itself."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def assign_full(target: torch.Tensor, whole: torch.Tensor) -> None:
    """``target`` (a parameter, a shadow: sharded or not) set from the whole tensor ``whole``."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    whole = whole.to(device=target.device, dtype=target.dtype)
    if isinstance(target, DTensor):
        whole = distribute_tensor(whole, target.device_mesh, target.placements)
    target.copy_(whole)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over sharded gradients: the norm of the whole gradient, every
    rank's shards counted, then every shard scaled by the same factor."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = full_tensor(torch.nn.utils.get_total_norm(grads))
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def optimizer_state(module: nn.Module, opt: torch.optim.Optimizer, names: list[str]) -> dict:
    """The optimiser's state, whole, keyed by parameter name (a collective when sharded; ``{}`` on all
    but the main process then). ``names``: the trained parameters' names in the optimiser's order."""
    if is_sharded(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return _rekeyed(opt.state_dict(), names.__getitem__)


def load_optimizer_state(module: nn.Module, opt: torch.optim.Optimizer, state: dict, names: list[str]) -> None:
    """Load :func:`optimizer_state`'s dictionary (or one keyed by position, as checkpoints were written
    before) into ``opt``, sharded or not."""
    by_position = all(isinstance(k, int) for k in state["state"])
    if is_sharded(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if by_position:
            state = _rekeyed(state, names.__getitem__)
        # strict=False: a parameter no step has used yet (a batch mode not drawn so far) has no moments
        set_optimizer_state_dict(module, opt, state, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    if not by_position:
        state = _rekeyed(state, {n: i for i, n in enumerate(names)}.__getitem__)
    opt.load_state_dict(state)


def _rekeyed(state: dict, key) -> dict:
    """An optimiser state dictionary with every parameter key (its moments' and its groups') mapped by
    ``key``: position -> name and back."""
    return {"state": {key(k): s for k, s in state["state"].items()},
            "param_groups": [{**g, "params": [key(k) for k in g["params"]]} for g in state["param_groups"]]}


def gather_for_saving(module: nn.Module, saved: nn.Module | None, trained_only: bool = False) -> None:
    """The sharded ``module``'s weights, whole, into ``saved`` (its unsharded copy from
    :func:`shard_for_training`, on the main process; None elsewhere). A collective. ``trained_only``
    (every rank the same): only the parameters that train are gathered, the copy keeps the rest as
    they were when it was made (frozen: they have not changed)."""
    if trained_only:
        target = dict(saved.named_parameters()) if saved is not None else {}
        with torch.no_grad():
            for name, p in module.named_parameters():  # the same order on every rank
                if p.requires_grad:
                    whole = full_tensor(p.detach())
                    if saved is not None:
                        target[name].copy_(whole.to("cpu"))
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if saved is not None:
        saved.load_state_dict(state)
