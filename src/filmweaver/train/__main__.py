"""``python -m filmweaver.train CONFIG [-o DIR] [--set key=value ...]``: ``filmweaver train`` itself
(one entry point), for ``torchrun -m filmweaver.train`` / ``accelerate launch -m filmweaver.train``."""

import sys

from filmweaver.cli import app

app(["train", *sys.argv[1:]], prog_name="python -m filmweaver.train")
