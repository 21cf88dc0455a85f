"""Issue 4: the forward cost of causal context with reused keys/values on one GPU (see BENCHMARKS.md).

``python3 scripts/gpu_bench_causal.py OUT_DIR``: each case is saved as it ends."""

import json
import sys
import traceback
from pathlib import Path

from filmweaver.bench import markdown_rows, run_bench, run_story_bench

STORY_CASES = [  # shot 10 / shot 2 with the cheaper memory (target 1.05; 1.126 with full attention)
    ("13b_story_causal", dict(shape="1.3b", shots=10, steps=2, context_attention="causal", compile_blocks=True),
     "filmweaver bench --shape 1.3b --story 10 --steps 2 --context-attention causal --compile"),
]

CASES = [
    # not measured yet: causal context + keyframes pooled 2x2 (4x fewer memory tokens), the path to 1.15x
    ("13b_causal_compile_pool2", dict(shape="1.3b", memory=(0, 10), context_attention="causal", compile_blocks=True,
                                      memory_compression=2, warmup=3),
     "filmweaver bench --shape 1.3b --memory 0,10 --context-attention causal --memory-compression 2 --compile --warmup 3"),
    ("13b_causal", dict(shape="1.3b", memory=(0, 10), context_attention="causal"),
     "filmweaver bench --shape 1.3b --memory 0,10 --context-attention causal"),
    ("13b_causal_compile", dict(shape="1.3b", memory=(0, 10), context_attention="causal", compile_blocks=True, warmup=3),
     "filmweaver bench --shape 1.3b --memory 0,10 --context-attention causal --compile --warmup 3"),
    ("14b_causal_compile", dict(shape="14b", memory=(0, 10), context_attention="causal", compile_blocks=True,
                                attention_backend="_native_cudnn", warmup=2, repeats=3),
     "filmweaver bench --shape 14b --memory 0,10 --context-attention causal --compile --attention _native_cudnn "
     "--warmup 2 --repeats 3"),
]

if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, kw, cmd in CASES:
        try:
            res = run_bench(progress=False, **kw)
            res["command"] = cmd
            (out / f"{name}.json").write_text(json.dumps(res, indent=1))
            print(markdown_rows(res, cmd), flush=True)
        except Exception:  # noqa: BLE001 - report and go on
            print(f"{name} FAILED\n{traceback.format_exc()[-3000:]}", flush=True)
    for name, kw, cmd in STORY_CASES:
        try:
            res = run_story_bench(**kw)
            res["command"] = cmd
            (out / f"{name}.json").write_text(json.dumps(res, indent=1))
            print(name, "shot N / shot 2 =", res["last_over_second"], [r["denoise_s"] for r in res["shots"]], flush=True)
        except Exception:  # noqa: BLE001 - report and go on
            print(f"{name} FAILED\n{traceback.format_exc()[-3000:]}", flush=True)
