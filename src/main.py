"""``python src/main.py COMMAND ...`` — see README.md or ``python src/main.py --help``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faceattr.cli import main

if __name__ == "__main__":
    sys.exit(main())
