"""One run per output directory: a lock that names its holder and dies with it."""

import fcntl
import json
import os
import socket
import time


class RunLockedError(RuntimeError):
    """Raised when another live process holds a run's output directory."""


class RunLock:
    """Holds a directory for one process, for as long as that process lives.

    A scheduler that restarts a job it wrongly believes dead starts a second run on the
    first one's directory: both then write the same backup, log and model. The lock is an
    exclusive `flock` on `<directory>/.run.lock`, a file that names its holder as JSON
    (`{"pid", "host", "started"}`). A second process is refused at once with a
    `RunLockedError` that names the holder. The kernel releases the lock when the holding
    process exits or is killed, so a hold left by a killed run never blocks its restart,
    and there is nothing to clean up by hand.

    Limits: `flock` excludes processes that see the same file through one kernel, or
    through NFS (v4, or v3 with a lock manager; Linux maps `flock` to NFS byte-range
    locks), which then spans hosts. Some network and FUSE file systems ignore or only
    locally honour `flock`; two hosts on such a file system are not kept apart. On NFS
    the lock is a lease the holder's host renews: when that host dies (not just the
    process), the server frees the lock only once the lease expires, about 90 s (the NFS
    server's lease time), and restarts until then are refused. A holder that is alive but
    hung still holds the directory: stop that process, not the lock.

    Args:
        directory: str, the directory to hold; created if absent. When it cannot be
            created or written, `acquire` raises the `OSError` naming it.

    Example:
    >>> with RunLock("runs/clip"):
    ...     trainer.fit(...)
    """

    def __init__(self, directory):
        self.directory = str(directory)
        self.path = os.path.join(self.directory, ".run.lock")
        self._file = None

    def acquire(self):
        """Takes the lock, or raises `RunLockedError` naming the live holder."""
        if self._file is not None:
            raise RuntimeError(
                f"Expected a `RunLock` that is not held; release it before acquiring it "
                f"again. Received: a `RunLock` already holding {self.path}"
            )
        while True:
            file = self._open()
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(file)
                file.close()
                raise RunLockedError(
                    f"The output directory {self.directory} is in use by another run: "
                    f"{holder}. Expected no live run on it: stop that one, or choose "
                    "another output directory."
                ) from None
            except BaseException:
                file.close()
                raise
            # A releasing holder unlinks the file while holding it: a lock taken on the
            # unlinked file would hold nothing, so take it again on the file now there.
            try:
                same = os.path.samestat(os.fstat(file.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            file.close()
        file.seek(0)
        file.truncate()
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        file.write(json.dumps(holder))
        file.flush()
        self._file = file
        return self

    def _open(self):
        try:
            os.makedirs(self.directory, exist_ok=True)
            return open(self.path, "a+")
        except OSError as error:
            # Else the error names the lock file or a parent, not the run's directory.
            raise type(error)(
                error.errno,
                "Expected an output directory this process can create and write. "
                f"Received: {self.directory} ({error.strerror}: {error.filename})",
            ) from error

    def release(self):
        """Removes the lock file and releases the lock; a no-op when not held."""
        if self._file is None:
            return
        try:
            os.remove(self.path)
        finally:
            self._file.close()  # closing releases the flock
            self._file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


def _read_holder(file):
    """The holder's description from the lock file, as far as it has been written."""
    # The holder writes its name right after locking; give it that moment.
    for _ in range(20):
        file.seek(0)
        try:
            holder = json.loads(file.read())
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
            return f"PID {holder['pid']} on host {holder['host']}, started {started}"
        except (ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "a process that has not written its PID and host"
