"""Worker for test_sharded_training (run under torchrun on CPU with gloo): `filmweaver train` on
configs/synth-test.yaml with the given overrides. Unless KILL_AT is 0 the run is killed as step KILL_AT
ends (KeyboardInterrupt on every rank, as a lost machine kills a run between checkpoints), then the
same training runs again in this process, as the same command would on the next machine, with the
overrides after ``--`` added (another way of training: sharded where the first was not).

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_worker.py OUT KILL_AT [KEY=VALUE ...] [-- KEY=VALUE ...]
"""

import sys

import filmweaver.train.dit as dit
from filmweaver.train.config import load_train_config
from filmweaver.train.run import run_training


def main(out: str, kill_at: int, *args: str) -> None:
    k = args.index("--") if "--" in args else len(args)
    overrides, again = [f"output_dir={out}", *args[:k]], list(args[k + 1:])
    if kill_at:
        real_update, calls = dit.EMA.update, {"n": 0}

        def update_or_die(self):
            calls["n"] += 1
            if calls["n"] == kill_at:
                raise KeyboardInterrupt
            real_update(self)

        dit.EMA.update = update_or_die
        try:
            run_training(load_train_config("configs/synth-test.yaml", overrides), progress=False)
        except KeyboardInterrupt:
            print(f"killed at step {kill_at}", flush=True)
        finally:
            dit.EMA.update = real_update
    run_training(load_train_config("configs/synth-test.yaml", overrides + again), progress=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
