"""Worker for test_context_parallel (run under torchrun on CPU with gloo): the context-parallel forward
of every rank must equal the single-process forward, with full and with causal context."""

import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
from test_backbone import inputs, make_transformer  # noqa: E402

from filmweaver.backbone.wan import ContextKVCache  # noqa: E402
from filmweaver.context import ContextFrames  # noqa: E402


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    x, t, e = inputs(b=2, f=3)
    # an odd token count (48 generated + 16 + 4 + 1 context): the shards are uneven
    ctx = [ContextFrames(torch.randn(1, 16, 1, 8, 8), torch.tensor([-9.0]), 100.0, 1, "shot"),
           ContextFrames(torch.randn(1, 16, 2, 8, 8), torch.tensor([-4.0, -3.0]), 0.0, 2, "temporal"),
           ContextFrames(torch.randn(1, 16, 4, 8, 8), torch.tensor([-8.0, -7, -6, -5]), 0.0, 4, "temporal")]
    result = {}
    for mode in ("full", "causal"):
        ref_model, cp_model = make_transformer(seed=7), make_transformer(seed=7)
        ref_model.context_attention = cp_model.context_attention = mode
        cp_model.enable_context_parallel("ulysses")
        with torch.no_grad():
            ref = [ref_model(x, torch.full((2,), tv), e, ctx) for tv in (800.0, 300.0)]
            cache = ContextKVCache()
            got = [cp_model(x, torch.full((2,), tv), e, ctx, kv_cache=cache) for tv in (800.0, 300.0)]
            plain_ref, plain = ref_model(x, t, e), cp_model(x, t, e)  # no context: the generated tokens alone
        result[mode] = {"max_diff": max((a - b).abs().max().item() for a, b in zip(ref + [plain_ref], got + [plain], strict=True)),
                        "cache_hits": cache.hits}
    for mode in result:  # the worst rank counts
        d = torch.tensor(result[mode]["max_diff"])
        dist.all_reduce(d, op=dist.ReduceOp.MAX)
        result[mode]["max_diff"] = d.item()
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # gloo's functional-collective threads abort at interpreter exit otherwise


if __name__ == "__main__":
    main(sys.argv[1])
