"""Child processes that never outlive their owner.

Each child runs in its own session (so its whole process group can be signalled),
receives SIGKILL if the thread that started it dies (``PR_SET_PDEATHSIG``), and is
stopped with SIGTERM, a bounded wait, then SIGKILL on the group.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = ["ManagedProcess", "Stopped", "free_port", "kill_process_group", "pdeathsig_preexec", "stop_on"]

_PR_SET_PDEATHSIG = 1


def _set_pdeathsig() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Stopped(Exception):
    """Raised in the main thread by the handler :func:`stop_on` installs; the message names the signal."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


def stop_on(*signums: signal.Signals) -> None:
    """Turn the given signals into :class:`Stopped` so ``finally`` blocks tear everything down."""
    for signum in signums:
        signal.signal(signum, _raise_stopped)


def pdeathsig_preexec() -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child receive SIGKILL when its parent thread dies."""
    return _set_pdeathsig


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that were free on ``host`` a moment ago (all held at once while chosen)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def kill_process_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid``; a group already gone is fine."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ManagedProcess:
    """One child process in its own session, its output appended to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_set_pdeathsig,
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        """The child's process id (also its process group id)."""
        return self.popen.pid

    def poll(self) -> int | None:
        """The exit status, or None while running."""
        return self.popen.poll()

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the child's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM the group, wait up to ``timeout`` seconds, then SIGKILL; returns the exit status."""
        try:
            if self.popen.poll() is None:
                kill_process_group(self.popen.pid, signal.SIGTERM)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            # The leader may be gone while others in its group live on.
            kill_process_group(self.popen.pid, signal.SIGKILL)
            return self.popen.wait()
        finally:
            self._log.close()
