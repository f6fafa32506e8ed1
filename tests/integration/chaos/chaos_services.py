"""Dependencies a chaos test may take away: private instances, never the shared ones.

* :class:`PrivatePostgres` — a cluster of its own (``initdb`` + ``pg_ctl`` from the PostgreSQL 15
  binaries) on a free loopback port in a temporary folder, so stopping it never touches the shared
  server on 5432 that other tests use. As root it runs as ``postgres`` (``initdb`` refuses root).
* :class:`PrivateRedis` — ``redis-server`` on a free port, no persistence.
* :class:`TcpProxy` — a loopback TCP proxy in front of a server (the moto S3 server, whose objects
  live in its memory and would be lost if it were stopped): :meth:`TcpProxy.cut` refuses new
  connections and resets open ones, :meth:`TcpProxy.restore` accepts again on the same port.
* :class:`SmallDisk` — a tmpfs of a few MiB mounted for the object store, filled with a ballast
  file to make writes fail with ``ENOSPC``, emptied to give the space back.

Each start waits until the service answers and says precisely why when it cannot
(:func:`tests.services.unavailable`: a skip on a developer machine, a failure under ``CI=true``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from tests import services

PG_BIN = Path(os.environ.get("KEENEYE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own, stopped and started at will."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").is_file() or not (PG_BIN / "pg_ctl").is_file():
            services.unavailable(f"PostgreSQL server binaries not found in {PG_BIN} (apt install postgresql)")
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            services.unavailable("running as root without runuser: initdb refuses root")
        # Under /tmp (pytest's tmp_path is private to the user; the postgres user must reach this).
        self.dir = Path(tempfile.mkdtemp(prefix="keeneye-chaos-pg-"))
        self.dir.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = services.free_port()
        self.up_once = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run([*_as_postgres(), *args], capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            problem = f"{Path(args[0]).name} failed ({done.returncode}): {output}\n{self.logs()}"
            if self.up_once:  # it worked before: a failure of the test, not a missing service
                raise AssertionError(problem)
            services.unavailable(problem)

    def init(self) -> None:
        self._pg(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"
        )
        self.up_once = True

    def stop(self) -> None:
        """A fast shutdown: open connections are terminated, new ones refused until :meth:`start`."""
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""

    def remove(self) -> None:
        if self.running():
            with contextlib.suppress(Exception):
                subprocess.run(
                    [
                        *_as_postgres(),
                        str(PG_BIN / "pg_ctl"),
                        "-D",
                        str(self.data),
                        "-m",
                        "immediate",
                        "stop",
                    ],
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """``redis-server`` on a port of its own, without persistence."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            services.unavailable("redis-server not found (apt install redis-server)")
        assert binary is not None
        self.binary, self.tmp, self.port = binary, tmp, services.free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        with (self.tmp / f"redis-{self.starts}.log").open("wb") as out:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.tmp)],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if not services.wait_for_port(self.port, proc=self.proc):
            problem = f"redis-server did not start on port {self.port}"
            assert self.starts == 1, problem  # it started before: a failure of the test
            services.unavailable(problem)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``; :meth:`cut` makes the upstream unreachable."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = services.free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        """Listen (again) on the same port and forward every connection."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="proxy-accept").start()

    def cut(self) -> None:
        """Stop listening (new connections are refused) and reset every open connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                # linger 0: a reset, as a crashed peer gives. shutdown() first: a pump thread blocked in
                # recv() on this socket keeps it open through close() alone, leaving a stalled
                # connection (a different failure: see docs/operations.md) instead of a reset one.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    server.close()
                    return
                self._conns |= {client, server}
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True, name="proxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns -= {src, dst}

    def close(self) -> None:
        self.cut()


class SmallDisk:
    """A tmpfs of ``size_mib`` MiB at ``path`` (root only), filled and emptied by the test."""

    def __init__(self, path: Path, size_mib: int = 8) -> None:
        if os.geteuid() != 0:
            services.unavailable("mounting a small tmpfs for the full-disk case needs root")
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            services.unavailable(f"cannot mount a tmpfs at {path}: {done.stderr.decode(errors='replace')}")
        self.path = path
        self.ballast = path / "ballast.bin"

    def fill(self) -> int:
        """Write the ballast until the disk is full (to the last page); returns its size in bytes."""
        written = 0
        with self.ballast.open("ab", buffering=0) as out:
            for size in (1 << 20, 65536, 4096, 512):
                block = b"\0" * size
                try:
                    while True:
                        written += out.write(block) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        return written

    def empty(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def unmount(self) -> None:
        for _ in range(20):  # a worker may still hold a file open for a moment
            if subprocess.run(["umount", str(self.path)], capture_output=True, check=False).returncode == 0:
                return
            time.sleep(0.25)
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
