"""`python -m torch_mobilenets.predict IMAGE...`, as before the command line had subcommands:
the same as `torch-mobilenets predict IMAGE...`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]], prog="python -m torch_mobilenets"))
