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
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(parent_pid: int, prctl: Callable[..., int] | None = None) -> None:
    """Ask for SIGTERM when the parent exits; exit now if it already has (the race before the call)."""
    call = prctl or _prctl()
    if call is None:
        return
    call(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def preexec(parent_pid: int | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen`` that ties the child to this process.

    libc is resolved here, in the parent: between fork and exec the child only makes
    the system call, taking no lock a thread of the parent might have held."""
    pid = os.getpid() if parent_pid is None else parent_pid
    prctl = _prctl()

    def run() -> None:
        if prctl is not None:
            die_with_parent(pid, prctl)

    return run
