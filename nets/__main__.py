"""``python -m nets ...`` — see :mod:`nets.cli`."""

from nets.cli import main

raise SystemExit(main())
