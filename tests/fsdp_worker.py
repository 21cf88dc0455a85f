"""Worker for test_sharded_training (run under torchrun on CPU with gloo): `filmweaver train` on
configs/synth-test.yaml with the given overrides, killed (KeyboardInterrupt on every rank) as step
KILL_AT ends unless it is 0, as a lost machine kills a run between checkpoints.

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_worker.py OUT KILL_AT [KEY=VALUE ...]
"""

import sys

import filmweaver.train.dit as dit
from filmweaver.train.config import load_train_config
from filmweaver.train.run import run_training


def main(out: str, kill_at: int, *overrides: str) -> None:
    real_update, calls = dit.EMA.update, {"n": 0}

    def update_or_die(self):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt(f"killed at step {kill_at}")
        real_update(self)

    dit.EMA.update = update_or_die
    run_training(load_train_config("configs/synth-test.yaml", [f"output_dir={out}", *overrides]), progress=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
