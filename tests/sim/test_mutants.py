"""The mutants of ``scripts/sim-mutants.sh`` still apply to the code they revert.

Each patch in ``tests/sim/mutants`` reverts one fix the simulator must find from seeds alone. A
refactor that moves the fixed lines leaves a patch that no longer applies, and the proof script
then stops at it (as it did once, unnoticed, after the steering change moved the cancel poll):
this test says so at the change that moved them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PATCHES = sorted((ROOT / "tests" / "sim" / "mutants").glob("*.patch"))


def test_there_are_mutants() -> None:
    assert len(PATCHES) >= 8, PATCHES


@pytest.mark.parametrize("patch", PATCHES, ids=[p.stem for p in PATCHES])
def test_the_mutant_applies_to_the_runtime(patch: Path) -> None:
    touched = [line.split(" b/", 1)[1] for line in patch.read_text().splitlines() if line.startswith("diff --git")]
    assert touched and all(path.startswith("lib/alfred_jobs/") for path in touched), touched
    check = subprocess.run(["git", "apply", "--check", str(patch)], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, f"{patch.name} no longer applies; regenerate it: {check.stderr}"
