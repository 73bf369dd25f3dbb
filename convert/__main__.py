"""`python -m convert ...` in a checkout: the same as `torch-mobilenets convert ...`."""

import sys

from torch_mobilenets.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]], prog="python -m"))
