"""``python -m alfred_tools.fidelity``: run the faithful proxy (see ``front.main``)."""

import sys

from alfred_tools.fidelity.front import main

if __name__ == "__main__":
    sys.exit(main())
