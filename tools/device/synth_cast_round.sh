#!/usr/bin/env bash
# One call of the multi-character recipe on a lent H200: continue configs/synth-cast.yaml where it stopped
# (tools/device/synth_cast.sh), and once its steps are all done, spend what is left of the call on the
# held-out ablation of the model it made (tools/device/synth_cast_eval.sh; on the same warm machine a
# later call resumes the evaluation story by story). DEADLINE: seconds from the call's start by which
# everything must have stopped (the call's limit less the packing).
#   CARRY=S BUDGET=8.4 DEADLINE=570 bash tools/device/synth_cast_round.sh
set -uo pipefail
START=$SECONDS
RUN=${RUN:-runs/synth-cast}
DEADLINE=${DEADLINE:-570}
if [ ! -f $RUN/model/done ]; then
  RUN=$RUN bash tools/device/synth_cast.sh
  python3 - "$RUN" <<'PY' && touch $RUN/model/done
import json, sys
state = json.load(open(f"{sys.argv[1]}/checkpoint/state.json"))
print("recipe at step", state["step"], "of", state["plan"]["total"])
sys.exit(0 if state["step"] >= state["plan"]["total"] else 1)
PY
fi
LEFT=$((DEADLINE - (SECONDS - START) - 25))
if [ -f $RUN/model/done ] && [ $LEFT -gt 60 ]; then
  echo "evaluating for $LEFT s"
  B_RUN=$RUN LIMIT=$LEFT CAST_ARMS="${CAST_ARMS:-entity@B topk@B sink_window@B no_shot_cache@B}" \
    SINGLE_ARMS="${SINGLE_ARMS:-full@B}" bash tools/device/synth_cast_eval.sh
fi
