"""`make run`: bring every Crawlsite process up on this machine, and down again on Ctrl-C.

1. Read and check the environment (a bad value stops here with one line naming it).
2. Redis: REDIS_URL if set (it must answer), else the embedded redis-server with its data in var/.
3. Migrate, make sure an admin account and the demo project exist.
4. Start the Procfile's processes with honcho (web, WORKERS rq workers on `crawls`, one on
   `tasks` for short jobs such as Excel builds, conductor, demo site).
5. On Ctrl-C or SIGTERM: stop honcho, then any process that outlived it (this process is a
   child subreaper, so orphans of crashed children come back to it), then the embedded Redis.
"""

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import redis

from crawlsite.private_files import make_tree_private
from launcher.redis import EmbeddedRedis, ensure_password_file

BASE_DIR = Path(__file__).resolve().parent.parent
PR_SET_CHILD_SUBREAPER = 36


class StartupError(Exception):
    """One line for the user; raised for any bad environment value or unreachable service."""


def load_dotenv(path):
    """Values from .env fill in variables the environment does not already set."""
    if not path.exists():
        return
    from honcho.environ import parse

    for key, value in parse(path.read_text()).items():
        os.environ.setdefault(key, value)


def read_config():
    from django.core.exceptions import ImproperlyConfigured

    from crawlsite.env import (
        check_database_url, check_redis_url, env_allowed_networks, env_bool, env_int, env_str,
    )

    try:
        config = {
            "host": env_str("HOST", "127.0.0.1"),
            "port": env_int("PORT", 8000, minimum=1, maximum=65535),
            "workers": env_int("WORKERS", 2, minimum=0, maximum=64),
            "demo_port": env_int("DEMO_PORT", 0, minimum=0, maximum=65535),
            "redis_url": env_str("REDIS_URL"),
            "behind_proxy": env_bool("BEHIND_PROXY", False),
            "forwarded_allow_ips": check_forwarded_allow_ips(env_str("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")),
            "allowed_networks": env_allowed_networks(),
        }
        if config["redis_url"]:
            check_redis_url("REDIS_URL", config["redis_url"])
        if env_str("DATABASE_URL"):
            check_database_url("DATABASE_URL", env_str("DATABASE_URL"))
    except ImproperlyConfigured as exc:
        raise StartupError(str(exc)) from None
    if not config["demo_port"]:
        config["demo_port"] = config["port"] + 1 if config["port"] < 65535 else config["port"] - 1
    return config


def check_forwarded_allow_ips(value):
    """FORWARDED_ALLOW_IPS: the proxies whose X-Forwarded-* headers uvicorn believes (addresses or
    networks, comma-separated, or * for any). Checked here so a typo stops startup."""
    import ipaddress

    from django.core.exceptions import ImproperlyConfigured

    for entry in value.split(","):
        entry = entry.strip()
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ImproperlyConfigured(
                f"FORWARDED_ALLOW_IPS={value!r}: {entry!r} is not an IP address or network"
            ) from None
    return value


def web_proxy_flags(config):
    """uvicorn's flags for X-Forwarded-Proto/-For. uvicorn believes them by default from
    127.0.0.1, so without a proxy anyone on this machine could pose as an HTTPS client or as
    another address (and dodge the login throttle): only BEHIND_PROXY=1 turns them on."""
    return "--proxy-headers" if config["behind_proxy"] else "--no-proxy-headers"


def check_redis(url):
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        raise StartupError(f"REDIS_URL: cannot reach Redis ({exc})") from None
    finally:
        client.close()


def check_port_free(host, port, name):
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StartupError(f"{name}={port}: cannot listen on {host}:{port} ({exc.strerror})") from None


def manage(*args, env):
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env)
    if result.returncode != 0:
        raise StartupError(f"python manage.py {' '.join(args)} failed (exit code {result.returncode})")


def announce_when_up(url, stop_event):
    deadline = time.monotonic() + 120
    while not stop_event.is_set() and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                pass
        except urllib.error.HTTPError:
            pass  # 503 while workers start: the server is up all the same
        except OSError:
            time.sleep(0.3)
            continue
        bar = "=" * 64
        print(f"\n{bar}\n  Crawlsite is running at {url}/\n  Press Ctrl-C to stop everything.\n{bar}\n", flush=True)
        return


def become_subreaper():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: leftover children are still found while their parents live


def stop_descendants(timeout=10.0):
    """Terminate every process still below this one, then kill what does not exit."""
    me = psutil.Process()
    children = me.children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def main():
    # Everything this process and its children create (database, Redis files, secrets, logs) is
    # readable by this account only.
    os.umask(0o077)
    os.chdir(BASE_DIR)
    load_dotenv(BASE_DIR / ".env")
    var_dir = Path(os.environ.get("CRAWLSITE_VAR_DIR") or BASE_DIR / "var")
    embedded = None
    honcho = None
    stop_event = threading.Event()
    become_subreaper()

    def on_signal(signum, frame):
        stop_event.set()
        if honcho is not None and honcho.poll() is None:
            honcho.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    url_file = var_dir / "redis.url"
    try:
        config = read_config()
        fixed = make_tree_private(var_dir)
        if fixed:
            print(f"Made {len(fixed)} file(s) under {var_dir} private to this account (0600 files, 0700 folders).")
        check_port_free(config["host"], config["port"], "PORT")
        check_port_free("127.0.0.1", config["demo_port"], "DEMO_PORT")
        if config["redis_url"]:
            check_redis(config["redis_url"])
            redis_url = config["redis_url"]
        else:
            password = ensure_password_file(var_dir / "redis-password")
            embedded = EmbeddedRedis(var_dir / "redis", persistent=True, password=password).start()
            redis_url = embedded.url
            fd = os.open(url_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(redis_url)
            print(f"Started the embedded Redis on 127.0.0.1:{embedded.port} (data in {embedded.data_dir})")
        env = dict(os.environ)
        env.update(
            REDIS_URL=redis_url,
            WEB_HOST=config["host"],
            WEB_PORT=str(config["port"]),
            DEMO_PORT=str(config["demo_port"]),
            RQ_REDIS_URL=redis_url,
            PYTHONUNBUFFERED="1",
            WEB_PROXY_FLAGS=web_proxy_flags(config),
            FORWARDED_ALLOW_IPS=config["forwarded_allow_ips"],
            # Crawls refuse loopback addresses: open the demo site's port, and only that, unless the
            # user chose the exceptions (the dashboard and Redis stay out of reach either way).
            CRAWLSITE_ALLOWED_NETWORKS=config["allowed_networks"] or f"127.0.0.1:{config['demo_port']}",
        )
        # Server processes are started by path from the venv that runs this launcher.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        manage("migrate", "--noinput", "-v", "0", env=env)
        manage("ensureadmin", env=env)
        if (BASE_DIR / "dashboard" / "management" / "commands" / "ensuredemo.py").exists():
            manage("ensuredemo", "--url", f"http://127.0.0.1:{config['demo_port']}/", env=env)
        if stop_event.is_set():
            return 130
        concurrency = f"worker={config['workers']}"
        host = config["host"]
        shown_host = f"[{host}]" if ":" in host else host
        if host in ("0.0.0.0", "::"):
            shown_host = "127.0.0.1"
        threading.Thread(
            target=announce_when_up,
            args=(f"http://{shown_host}:{config['port']}", stop_event),
            daemon=True,
        ).start()
        honcho = subprocess.Popen(
            [sys.executable, "-m", "honcho", "start", "-f", "Procfile", "-e", os.devnull, "-c", concurrency],
            cwd=BASE_DIR,
            env=env,
        )
        if stop_event.is_set():
            honcho.send_signal(signal.SIGTERM)
        code = honcho.wait()
        return 0 if stop_event.is_set() else code
    except StartupError as exc:
        print(f"Startup error: {exc}", file=sys.stderr)
        return 2
    finally:
        stop_event.set()
        if embedded is not None or honcho is not None:
            print("Stopping every Crawlsite process...", flush=True)
        stop_descendants()
        if embedded is not None:
            embedded.stop()
            url_file.unlink(missing_ok=True)
            print("All stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
