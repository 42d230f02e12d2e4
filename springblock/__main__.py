import sys

from springblock.cli import main

sys.exit(main())
