"""Staging directories named for the process that writes them, so a rerun removes a dead one's.

An export writes each artifact into a staging directory beside its destination and renames it
into place (`.tmp-*` for a SavedModel version, `.tflite-*` for the TFLite files, `.old-*` for
the files they replace). A killed export leaves its staging directory behind. Each name carries
the writer's PID, host and PID namespace, `.tmp-<pid>@<host>.pidns<inode>-<random>`, and the
next export in that directory removes the ones whose writer is gone: same host and namespace,
and no process with that PID. A staging directory of a live export (a concurrent one into the
same directory, or the current one) is kept, and so is one written from another host or
another PID namespace sharing the filesystem, whose PIDs this process cannot check: two
containers with host networking share a host name, and in each the other's live writer would
look dead. A reused PID makes a dead writer look alive, and a restarted container gets a new
namespace; such a directory then waits for a later export or for hand removal, which is the
safe way to be wrong.
"""

import contextlib
import os
import re
import shutil
import socket
import tempfile

KINDS = ("tmp", "tflite", "old")
_NAME = re.compile(r"^\.(?P<kind>[a-z]+)-(?P<pid>[0-9]+)@(?P<host>.+)-[a-z0-9_]+$")
# Linux PIDs are positive 32-bit ints (at most 2**22 in practice): a larger number in a
# name is not one this module wrote, and `os.kill` would raise OverflowError on it.
_MAX_PID = 2**31 - 1


def _host():
    # Characters outside the pattern would make a name this module cannot parse back.
    name = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"
    try:
        return f"{name}.pidns{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # no /proc (not Linux): one PID namespace per host
        return name


def prefix(kind, pid=None):
    """The name prefix of a staging directory of `kind` written by `pid` (default: this process)."""
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}. Received: kind={kind!r}")
    return f".{kind}-{os.getpid() if pid is None else pid}@{_host()}-"


def make_directory(kind, parent):
    """Creates a new staging directory of `kind` in `parent` and returns its path."""
    return tempfile.mkdtemp(prefix=prefix(kind), dir=parent)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(parent):
    """Removes the staging directories in `parent` whose writer on this host has exited.

    Returns:
        Sorted names of what was removed.
    """
    if not os.path.isdir(parent):
        return []
    host, removed = _host(), []
    for name in sorted(os.listdir(parent)):
        match = _NAME.match(name)
        if match is None or match["kind"] not in KINDS or match["host"] != host:
            continue
        if not 0 < int(match["pid"]) <= _MAX_PID or _alive(int(match["pid"])):
            continue
        path = os.path.join(parent, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):  # a concurrent export removed it
                os.remove(path)
        removed.append(name)
    return removed


def replace_directory(new, target):
    """Moves `new` to `target`, replacing any directory there with two renames."""
    if os.path.exists(target):
        old = make_directory("old", os.path.dirname(target))
        os.rename(target, os.path.join(old, "previous"))
        os.rename(new, target)
        shutil.rmtree(old)
    else:
        os.rename(new, target)
