"""The package's types hold: ``mypy --strict`` over herald_push as imported
(so, when it is installed, through its ``py.typed``) and over these tests,
which use every method. Skipped where mypy is not installed; the virtualenv
of scripts/backend-libs.sh has it, pinned."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


@unittest.skipIf(importlib.util.find_spec("mypy") is None, "mypy is not installed")
class TypesTest(unittest.TestCase):
    def test_mypy_strict(self) -> None:
        # The package itself, then the tests as a user of it (mypy takes a
        # package or files, not both in one run).
        for target in (["-p", "herald_push"], [HERE]):
            run = subprocess.run(
                [sys.executable, "-m", "mypy", "--strict", "--no-incremental", f"--cache-dir={os.devnull}", *target],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=HERE,
            )
            self.assertEqual(run.returncode, 0, f"mypy {target}: {run.stdout}{run.stderr}")


if __name__ == "__main__":
    unittest.main()
