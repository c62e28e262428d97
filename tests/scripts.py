"""Runs the project's command-line scripts (recipes, benchmarks) as a user would."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(path, flags, timeout):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, path), *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def run_script(path, *flags, timeout=300):
    """Runs `python <ROOT>/<path> <flags>` from the project root; fails the test on error.

    The project root is on the script's `PYTHONPATH`, so helper scripts under `tests/` can
    import `tests.*`. Returns the `subprocess.CompletedProcess`, with text output.
    """
    result = _run(path, flags, timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def script_usage_error(path, *flags, timeout=120):
    """Runs a script that must refuse its flags or files; returns its stderr.

    Fails the test unless the script exits non-zero with a usage message, not a traceback.
    """
    result = _run(path, flags, timeout)
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr
