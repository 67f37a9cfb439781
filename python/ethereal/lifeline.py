"""Child processes that die with their parent, however the parent dies.

``ethereal serve`` starts the simulated upstream (and uvicorn its workers) as child
processes. A parent stopped by SIGKILL, or by a signal that a server re-raises after its
own shutdown, runs no cleanup code: without this the children outlive it, holding ports.
On Linux the kernel delivers SIGTERM to a child whose parent exits (PR_SET_PDEATHSIG);
elsewhere this is a no-op and the parent's own cleanup is all there is.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask for SIGTERM when the parent exits; exit now if it already has (the race before the call)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def preexec(parent_pid: int | None = None) -> object:
    """A ``preexec_fn`` for ``subprocess.Popen`` that ties the child to this process."""
    pid = os.getpid() if parent_pid is None else parent_pid

    def run() -> None:
        die_with_parent(pid)

    return run
