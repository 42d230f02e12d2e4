"""``python -m phase_diagrams COMMAND ...``; see :mod:`phase_diagrams.cli`."""

import sys

from phase_diagrams.cli import main

if __name__ == "__main__":
    sys.exit(main())
