"""``python -m filmweaver.train CONFIG [-o DIR] [--set key=value ...]``: the same as ``filmweaver train``,
for machines where only the core dependencies are installed."""

import argparse

from filmweaver.train.config import load_train_config
from filmweaver.train.run import TimeBudgetSpent, run_training

parser = argparse.ArgumentParser(prog="python -m filmweaver.train")
parser.add_argument("config")
parser.add_argument("-o", "--output-dir")
parser.add_argument("--set", dest="overrides", action="append", default=[])
args = parser.parse_args()
overrides = args.overrides + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
try:
    cfg = load_train_config(args.config, overrides)
except ValueError as e:  # a --set key that names nothing, or an invalid config: the message, no traceback
    raise SystemExit(f"error: {e}") from None
try:
    print(run_training(cfg)["timings"])
except TimeBudgetSpent as e:
    raise SystemExit(f"error: {e}") from None
