"""A local Label Studio server for a laptop and for tests: started from its own virtual
environment, bound to 127.0.0.1, told not to call outside services, stopped with SIGTERM.

For a lab's shared server see labelstudio/README.md (container or WSGI behind nginx,
PostgreSQL, a fixed SECRET_KEY, personal access tokens).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from microal.errors import MicroalError

TOKEN_ENV = "LABEL_STUDIO_TOKEN"
EXECUTABLE_ENV = "MICROAL_LABEL_STUDIO"  # path to the label-studio executable
DEFAULT_VENV = Path(__file__).resolve().parents[2] / ".venv-labelstudio"


def find_executable() -> str:
    """label-studio from MICROAL_LABEL_STUDIO, the repository's .venv-labelstudio, or PATH."""
    candidates = [
        os.environ.get(EXECUTABLE_ENV),
        str(DEFAULT_VENV / "bin" / "label-studio"),
        shutil.which("label-studio"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    raise MicroalError(
        "Label Studio is not installed: run labelstudio/install.sh (its own virtual environment, "
        f"{DEFAULT_VENV}) or set {EXECUTABLE_ENV} to a label-studio executable"
    )


DATABASE_FILE = "label_studio.sqlite3"
TEMPLATE_DIR = "microal-empty-database"  # made by labelstudio/install.sh in the server's environment


def template_database(executable: str) -> Path | None:
    """The empty, migrated database install.sh left beside this label-studio, if any."""
    path = Path(executable).resolve().parents[1] / TEMPLATE_DIR / DATABASE_FILE
    return path if path.is_file() else None


def seed_database(data_dir: Path, executable: str) -> bool:
    """A new data folder gets a copy of the migrated template, so the first start does not run
    Label Studio's migrations (30-50 s on 2 cores); an older template is migrated the rest of
    the way by the server itself. Returns whether a copy was made."""
    target = data_dir / DATABASE_FILE
    template = template_database(executable)
    if target.exists() or template is None:
        return False
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(template, partial)
    partial.replace(target)  # never a half-copied database under the real name
    return True


def read_token(token_file: str | Path | None = None) -> str:
    """The API token from LABEL_STUDIO_TOKEN or a file; never printed or written elsewhere."""
    if token_file:
        path = Path(token_file)
        if not path.exists():
            raise MicroalError(f"{path}: token file does not exist")
        token = path.read_text().strip()
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise MicroalError(f"no Label Studio token: set {TOKEN_ENV} or pass --token-file")
    return token


def new_token_file(path: Path) -> str:
    """A fresh random token in a file only its owner can read."""
    token = secrets.token_hex(20)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    return token


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


@dataclass
class LocalServer:
    process: subprocess.Popen
    url: str
    data_dir: Path
    log: Path

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM: Label Studio stops in about a second with its database intact."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_server(
    data_dir: str | Path,
    port: int,
    files_root: str | Path,
    token: str,
    username: str = "expert@microal.local",
    password: str | None = None,
    timeout: float = 180,
    extra_env: dict[str, str] | None = None,
) -> LocalServer:
    """Start Label Studio on 127.0.0.1:port serving tiles under files_root; wait until it answers.

    The user and token are created at the first start of a data folder only (a new folder
    starts from install.sh's migrated empty database where there is one).
    """
    if not port_is_free(port):
        # Label Studio would silently move to the next port; refuse instead.
        raise MicroalError(f"port {port} on 127.0.0.1 is taken; choose another --port")
    data_dir, files_root = Path(data_dir).resolve(), Path(files_root).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    executable = find_executable()
    seed_database(data_dir, executable)
    env = {
        **os.environ,
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password or secrets.token_urlsafe(16),
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
        # No calls to outside services from a lab's (or a CI) machine.
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
        "LATEST_VERSION_CHECK": "false",
        **(extra_env or {}),
    }
    log = data_dir / "label-studio.log"
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            [
                executable,
                "start",
                "--no-browser",
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    server = LocalServer(process, f"http://127.0.0.1:{port}", data_dir, log)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if process.poll() is not None:
                raise MicroalError(f"Label Studio exited (code {process.returncode}); see {log}")
            try:
                with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return server
            except OSError:
                pass
            time.sleep(0.5)
        raise MicroalError(f"Label Studio did not answer on {server.url} within {timeout:.0f} s; see {log}")
    except BaseException:
        # Interrupted or failed while starting: it runs in its own session, so stop it here.
        server.stop()
        raise
