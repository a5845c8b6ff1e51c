"""``python -m attnplug`` (also ``torchrun -m attnplug`` / ``accelerate launch -m attnplug``): the command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
