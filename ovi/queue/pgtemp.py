"""A throwaway PostgreSQL server in a temp folder (tests, `ovi bench queue --postgres temp`).

`initdb` + `pg_ctl start` on a free loopback port, password auth over TCP (so a wrong password is
refused as on a real farm), deleted on `stop()`. PostgreSQL refuses to run as root: under root
the server binaries run as an unprivileged system user (`ovitest`, created with `useradd` when
missing). No library starts a server for us (testing.postgresql is unmaintained and also refuses
root), hence this file.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

from ovi.errors import InputError

SERVER_USER = "ovitest"  # the unprivileged user the server runs as when we are root
SUPERUSER, PASSWORD = "ovi", "ovi-test-password"


def find_bin_dir() -> Path:
    """The folder holding initdb/pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise InputError("PostgreSQL server binaries (initdb, pg_ctl) not found; install them with "
                     "`apt-get install -y postgresql` (make test does this as root)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_server_user() -> str:
    try:
        subprocess.run(["id", "-u", SERVER_USER], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        SERVER_USER], check=True, capture_output=True)
    return SERVER_USER


class TempPostgres:
    """One throwaway server. `url(db)` is a connection URL; `create_database()` a fresh database."""

    def __init__(self, *, bin_dir: str | os.PathLike | None = None):
        self.bin_dir = Path(bin_dir) if bin_dir else find_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="ovi-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            user = _ensure_server_user()
            shutil.chown(self.root, user)
            os.chmod(self.root, 0o755)
            self._as_user = ["runuser", "-u", user, "--"]
        self.started = False

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = self._as_user + [str(self.bin_dir / argv[0]), *argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr)[-2000:]
            if self.log.exists():
                tail += "\n--- server.log ---\n" + self.log.read_text()[-2000:]
            raise RuntimeError(f"{' '.join(argv[:2])} failed (exit {done.returncode}):\n{tail}")
        return done

    def start(self) -> "TempPostgres":
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_user:
            shutil.chown(pwfile, SERVER_USER)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
                  "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        pwfile.unlink()
        self._pg_ctl("start")
        self.started = True
        return self

    def _pg_ctl(self, action: str) -> None:
        # fsync off: a test server trades crash safety for speed; sockets in our own folder.
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                   f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        args = ["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options]
        if action == "restart":
            args += ["-m", "fast"]
        self._run(*args, action)

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every client connection is dropped."""
        self._pg_ctl("restart")

    def url(self, database: str = "postgres", *, password: str = PASSWORD) -> str:
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = name or f"q_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
            except RuntimeError:
                pass
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "TempPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

