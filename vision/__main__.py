"""``python -m vision COMMAND``: the vision subcommands without the rest of ``mgnet`` (e.g. under torchrun)."""

import sys

from vision.cli import main

if __name__ == "__main__":
    sys.exit(main())
