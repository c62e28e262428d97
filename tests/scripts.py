"""Runs the project's command-line scripts (recipes, benchmarks) as a user would."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(path, *flags, timeout=300):
    """Runs `python <ROOT>/<path> <flags>` from the project root; fails the test on error.

    Returns the `subprocess.CompletedProcess`, with `stdout` and `stderr` as text.
    """
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, path), *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
