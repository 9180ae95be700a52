"""``python -m tak``: see :mod:`tak.cli`."""
import sys

from tak.cli import main

if __name__ == "__main__":
    sys.exit(main())
