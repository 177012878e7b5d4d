"""Print the layer's requirements: pyproject's runtime dependencies, less the local-only ones.

Run by infra/layer/Makefile (inside `sam build`) with any Python >= 3.11 (tomllib).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# Needed only on a laptop (the embedded emulator), never inside Lambda.
LOCAL_ONLY = {"moto"}
# Needed on Lambda only: X-Ray subsegments for the Powertools tracer.
LAMBDA_ONLY = ["aws-xray-sdk>=2.12"]


def requirements(pyproject: Path) -> list[str]:
    """The runtime requirement lines for the Lambda layer."""
    deps = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    keep = [d for d in deps if re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower() not in LOCAL_ONLY]
    return keep + LAMBDA_ONLY


if __name__ == "__main__":
    print("\n".join(requirements(Path(sys.argv[1]))))
