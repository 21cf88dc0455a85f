"""Worker for test_cfg_parallel (run under torchrun on CPU with gloo, two ranks): CFG-parallel sampling
must give every rank the single-process result, with each rank running one branch of guidance."""

import json
import os
import sys

import torch
import torch.distributed as dist

from filmweaver.sampler import FlowMatchSampler, SamplerConfig


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, 3, 6, 6, generator=g)
    text, negative = torch.randn(1, 5, 8, generator=g), torch.randn(1, 5, 8, generator=g)
    weight = torch.randn(4, 4, generator=g)
    seen = []  # which prompt each forward got: "text" / "negative" / "both" (a batched pair)

    def velocity(x, t, e):
        seen.append("both" if e.shape[0] == 2 else "text" if torch.equal(e, text) else "negative")
        # per sample: the output depends on its own latents, timestep and prompt only (batch-consistent)
        mixed = torch.einsum("bcfhw,cd->bdfhw", torch.tanh(x), weight)
        return mixed * e.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1) + 1e-3 * t.view(-1, 1, 1, 1, 1)

    def without_memory(x, t, e):
        return 0.5 * velocity(x, t, e)

    result = {}
    for name, extra in (("cfg", {}), ("memory_guidance", {"memory_guidance_scale": 2.0})):
        cfg = SamplerConfig(scheduler="unipc", num_inference_steps=4, guidance_scale=4.0, **extra)
        kw = {"velocity_without_memory": without_memory} if extra else {}
        ref = FlowMatchSampler(cfg).sample(velocity, noise, text, negative, progress=False, **kw)
        seen.clear()
        par = FlowMatchSampler(cfg)
        par.enable_cfg_parallel()
        got = par.sample(velocity, noise, text, negative, progress=False, **kw)
        diff = torch.tensor((got - ref).abs().max().item())
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        branches = [None, None]
        dist.all_gather_object(branches, sorted(set(seen)))
        counts = [None, None]
        dist.all_gather_object(counts, len(seen))
        result[name] = {"max_diff": diff.item(), "branches": branches, "forwards": counts}
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    os._exit(0)
