import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from mm_keras.callbacks import RunLock, RunLockedError
from tests.scripts import ROOT

# Holds the directory in argv[1] until killed; prints "held" once it does.
HOLDER = """
import sys, time
from mm_keras.callbacks import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(300)
"""


@pytest.fixture
def holder(tmp_path):
    """A live process that holds `tmp_path`."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "held\n"
    yield process
    process.kill()
    process.wait()


def test_a_live_holder_is_named_and_refuses_at_once(tmp_path, holder):
    start = time.monotonic()
    with pytest.raises(RunLockedError) as error:
        RunLock(tmp_path).acquire()
    assert time.monotonic() - start < 1.0
    assert f"PID {holder.pid} on host {socket.gethostname()}" in str(error.value)
    assert str(tmp_path) in str(error.value)


def test_a_killed_holder_does_not_block(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with open(tmp_path / ".run.lock") as f:
        assert json.load(f)["pid"] == holder.pid  # its hold is left behind, stale
    with RunLock(tmp_path) as lock:
        with open(lock.path) as f:
            assert json.load(f)["pid"] == os.getpid()
    assert not os.path.exists(tmp_path / ".run.lock")  # released and removed


def test_a_released_lock_can_be_taken_again_and_a_held_one_not_twice(tmp_path):
    lock = RunLock(tmp_path / "run").acquire()
    with pytest.raises(RunLockedError, match=f"PID {os.getpid()} on host"):
        RunLock(tmp_path / "run").acquire()  # flock excludes open files, even in one process
    lock.release()
    with RunLock(tmp_path / "run"):
        pass


def test_acquiring_a_held_lock_again_says_expected_and_received(tmp_path):
    with RunLock(tmp_path) as lock:
        with pytest.raises(RuntimeError, match="Expected a `RunLock` that is not held.*Received"):
            lock.acquire()


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_directory_that_cannot_be_made_is_named(tmp_path, where):
    (tmp_path / "file").write_text("")
    directory = tmp_path / "file" if where == "a file" else tmp_path / "file" / "run"
    with pytest.raises(OSError, match=f"Received: {directory} \\("):
        RunLock(directory).acquire()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_directory_is_named(tmp_path):
    os.chmod(tmp_path, 0o555)
    try:
        with pytest.raises(PermissionError, match=f"Received: {tmp_path} \\("):
            RunLock(tmp_path).acquire()
    finally:
        os.chmod(tmp_path, 0o755)
