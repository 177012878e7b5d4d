"""``python -m alfred_tools.fidelity``: run the faithful proxy."""

import sys

from alfred_tools.fidelity import main

if __name__ == "__main__":
    sys.exit(main())
