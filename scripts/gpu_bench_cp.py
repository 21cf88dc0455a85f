"""Issue 4: one story on several GPUs. Run on `nvidia-h200-x2` (not yet measured):

    torchrun --nproc_per_node 2 scripts/gpu_bench_cp.py OUT_DIR

Times the context-parallel forward (Ulysses, and ring with cuDNN attention) at the 1.3B and 14B
shapes; compare with the one-GPU rows of BENCHMARKS.md (same shapes, same command without
``--context-parallel``) for the speed-up. Each case is saved by rank 0 as it ends."""

import json
import sys
import traceback
from pathlib import Path

import torch.distributed as dist

from filmweaver.bench import markdown_rows, run_bench

CASES = [
    ("13b_ulysses", dict(shape="1.3b", memory=(0, 10), context_parallel="ulysses"),
     "torchrun --nproc_per_node 2 -m filmweaver.cli bench --shape 1.3b --memory 0,10 --context-parallel ulysses"),
    ("13b_ring_cudnn", dict(shape="1.3b", memory=(0, 10), context_parallel="ring", attention_backend="_native_cudnn"),
     "torchrun --nproc_per_node 2 -m filmweaver.cli bench --shape 1.3b --memory 0,10 --context-parallel ring "
     "--attention _native_cudnn"),
    ("14b_ulysses", dict(shape="14b", memory=(0, 10), context_parallel="ulysses", warmup=1, repeats=3),
     "torchrun --nproc_per_node 2 -m filmweaver.cli bench --shape 14b --memory 0,10 --context-parallel ulysses "
     "--warmup 1 --repeats 3"),
]

if __name__ == "__main__":
    out = Path(sys.argv[1])
    for name, kw, cmd in CASES:
        try:
            res = run_bench(progress=False, **kw)
            if dist.get_rank() == 0:
                out.mkdir(parents=True, exist_ok=True)
                res["command"] = cmd
                (out / f"{name}.json").write_text(json.dumps(res, indent=1))
                print(markdown_rows(res, cmd), flush=True)
        except Exception:  # noqa: BLE001 - report and go on
            print(f"{name} FAILED on rank {dist.get_rank() if dist.is_initialized() else '?'}\n"
                  f"{traceback.format_exc()[-3000:]}", flush=True)
    dist.destroy_process_group()
