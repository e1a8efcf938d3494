"""Run a gunicorn server as a child process on a loopback socket.

Used by ``gcfork bench`` and by gcfork's own tests. The listening socket is
bound here, before gunicorn starts, and handed to it as ``fd://N``: the port is
known at once and no other process can take it in between.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import psutil

from gcfork.exceptions import ServerError

__all__ = ["GunicornProcess", "ServerError"]


class GunicornProcess:
    """A gunicorn master started with ``python -m gunicorn``.

    Args:
        app: the WSGI target, ``module:callable``.
        config: path of the gunicorn config file.
        log_path: file that receives gunicorn's stdout and stderr.
        python: the interpreter to run gunicorn with.
        cwd: working directory of the server.
        env: extra environment variables.
        args: extra command-line arguments for gunicorn.
        host: address to bind; loopback unless told otherwise.
        inherit_socket: bind the socket here and pass it to gunicorn
            (``fd://N``), so the port is known before it starts; False makes
            gunicorn bind a free port itself, which its ``USR2`` upgrade
            needs (a re-executed master cannot reuse an inherited ``fd://``).
    """

    def __init__(
        self,
        app: str,
        config: str | os.PathLike[str],
        log_path: str | os.PathLike[str],
        python: str = sys.executable,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        host: str = "127.0.0.1",
        inherit_socket: bool = True,
    ) -> None:
        self.app = app
        self.config = os.fspath(config)
        self.log_path = Path(log_path)
        self.python = python
        self.cwd = cwd
        self.env = dict(env or {})
        self.args = list(args)
        self.host = host
        self.inherit_socket = inherit_socket
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    # -- life cycle ---------------------------------------------------------

    def start(self) -> GunicornProcess:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, 0))
        self.port = self._sock.getsockname()[1]
        pass_fds: tuple[int, ...]
        if self.inherit_socket:
            self._sock.listen(128)
            bind, pass_fds = f"fd://{self._sock.fileno()}", (self._sock.fileno(),)
        else:
            # A free port, released for gunicorn to bind (a race that loopback
            # tests lose only if another process takes that port meanwhile).
            self._sock.close()
            self._sock = None
            bind, pass_fds = f"{self.host}:{self.port}", ()
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.python, "-m", "gunicorn", "-c", self.config, "--bind", bind,
                 *self.args, self.app],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                pass_fds=pass_fds, cwd=self.cwd, env=env, preexec_fn=_stop_with_parent,
            )
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerError("the server was not started")
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def worker_pids(self) -> list[int]:
        """Pids of the master's direct children, in start order."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [c.pid for c in sorted(children, key=_create_time)]

    def wait_ready(self, workers: int, timeout: float = 30.0) -> list[int]:
        """Wait until ``workers`` children exist and the server answers.

        Raises:
            ServerError: the master exited or did not get there in time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(
                    f"gunicorn exited with status {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            pids = self.worker_pids()
            if len(pids) >= workers and self._answers():
                return pids
            time.sleep(0.1)
        raise ServerError(f"no {workers} ready workers after {timeout}s:\n{self.log()[-3000:]}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop the master gracefully, then by force; reap every child.

        Returns:
            The master's exit status, or None if it had to be killed.
        """
        if self.proc is None:
            return None
        family = self._family()
        status: int | None = None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                status = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        else:
            status = self.proc.returncode
        for proc in family:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        return status

    def _family(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def __enter__(self) -> GunicornProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- requests -----------------------------------------------------------

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """GET ``path`` on a new connection; returns status and body."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


def _stop_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM to the master if
    the process that started it dies, so that even a benchmark killed with
    SIGKILL leaves no server behind. Elsewhere nothing happens."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _create_time(proc: psutil.Process) -> float:
    try:
        return float(proc.create_time())
    except psutil.Error:
        return float("inf")
