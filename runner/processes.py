"""Which process writes a run, recorded as tags so `runner.cleanup` can tell later whether
that process is still alive.

A pid alone is not enough: pids are reused, so the process's creation time goes with it.
"""

from __future__ import annotations

import socket

import psutil

HOST, PID, START = "runner.host", "runner.pid", "runner.pid_start"


def process_tags() -> dict[str, str]:
    """Tags that identify the calling process: host name, pid and creation time."""
    me = psutil.Process()
    return {HOST: socket.gethostname(), PID: str(me.pid), START: str(me.create_time())}


def is_orphaned(tags: dict[str, str]) -> bool | None:
    """True when the tagged process is gone, a zombie (killed, not yet reaped: it writes
    nothing any more) or another process under a reused pid; False when it lives; None
    when this host cannot tell (another host, or tags missing)."""
    if tags.get(HOST) != socket.gethostname() or not tags.get(START):
        return None
    try:
        process = psutil.Process(int(tags.get(PID, "")))
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        return str(process.create_time()) != tags[START]
    except ValueError:  # no pid, or not a number
        return None
    except psutil.NoSuchProcess:  # also a zombie that vanished between the two calls
        return True
    except psutil.AccessDenied:  # it exists, but is not ours to inspect
        return None
