"""`make run` as a new user meets it: the launcher brings everything up and takes it all down."""

import http.cookiejar
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest

from demosite import build_catalog
from launcher.redis import free_port
from tests.launcher.test_private_files import group_or_other_readable

ROOT = Path(__file__).resolve().parents[2]
DEMO_PRODUCTS = len(build_catalog("demo").products)


def launcher_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "RQ_REDIS_URL", "DATABASE_URL", "CRAWLSITE_ALLOWED_NETWORKS")}
    env.update(CRAWLSITE_VAR_DIR=str(tmp_path / "var"), PYTHONUNBUFFERED="1", **extra)
    return env


def run_launcher(env, timeout=30):
    return subprocess.run(
        [sys.executable, "-m", "launcher"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "extra,line",
    [
        ({"PORT": "abc"}, "Startup error: PORT='abc' is not a whole number"),
        ({"WORKERS": "-1"}, "Startup error: WORKERS=-1 is below the minimum of 0"),
        ({"REDIS_URL": "http://x"}, "Startup error: REDIS_URL='http://x' must start with redis://"),
        ({"REDIS_URL": "redis://127.0.0.1:1/0"}, "Startup error: REDIS_URL: cannot reach Redis"),
        ({"DATABASE_URL": "mysql://x/y"}, "Startup error: DATABASE_URL='mysql://x/y' must start with"),
        ({"BEHIND_PROXY": "maybe"}, "Startup error: BEHIND_PROXY='maybe' is not a boolean"),
        ({"FORWARDED_ALLOW_IPS": "10.0.0.1,proxy;rm"}, "Startup error: FORWARDED_ALLOW_IPS='10.0.0.1,proxy;rm': 'proxy;rm' is not"),
        ({"CRAWLSITE_ALLOWED_NETWORKS": "127.0.0.1:8001,localhost:8001"},
         "Startup error: CRAWLSITE_ALLOWED_NETWORKS: entry 'localhost:8001' is not ADDRESS[/PREFIX][:PORT]"),
        ({"CRAWLSITE_ALLOWED_NETWORKS": "::1"},
         "Startup error: CRAWLSITE_ALLOWED_NETWORKS: entry '::1' is not ADDRESS[/PREFIX][:PORT] (IPv6 addresses go"),
    ],
)
def test_bad_environment_stops_startup_with_one_line(tmp_path, extra, line):
    result = run_launcher(launcher_env(tmp_path, **extra))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(line)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr + result.stdout


def test_port_in_use_is_reported(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_launcher(launcher_env(tmp_path, PORT=str(port)))
    assert result.returncode == 2
    assert result.stderr.startswith(f"Startup error: PORT={port}: cannot listen on 127.0.0.1:{port}")


def _login(base, username, password):
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base}/accounts/login/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    data = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token, "next": "/"}
    ).encode()
    request = urllib.request.Request(f"{base}/accounts/login/", data=data, headers={"Referer": f"{base}/accounts/login/"})
    response = opener.open(request)
    return response.geturl(), response.read().decode()


def _api(base, token, path, data=None):
    request = urllib.request.Request(
        f"{base}{path}", data=None if data is None else json.dumps(data).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def crawl_the_demo(base, env, timeout=120):
    token = subprocess.run([sys.executable, "manage.py", "apitoken", "admin"], cwd=ROOT, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    [project] = _api(base, token, "/api/projects")
    crawl = _api(base, token, f"/api/projects/{project['id']}/crawls", {"workers": 1})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        crawl = _api(base, token, f"/api/crawls/{crawl['code']}")
        if crawl["status"] not in ("pending", "running", "finishing"):
            return crawl
        time.sleep(0.3)
    raise AssertionError(f"the demo crawl did not end: {crawl}")


def test_make_run_starts_everything_logs_in_and_ctrl_c_leaves_nothing(tmp_path):
    port = free_port()
    env = launcher_env(tmp_path, PORT=str(port), DEMO_PORT=str(free_port()), WORKERS="2")
    # A var/ left by an older version, readable by everyone.
    var = tmp_path / "var"
    (var / "old").mkdir(parents=True)
    (var / "old" / "notes.txt").write_text("old data")
    (var / "old" / "notes.txt").chmod(0o644)
    (var / "old").chmod(0o755)
    var.chmod(0o755)
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    output = []
    descendants = set()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "launcher exited early:\n" + "".join(output)
            output.append(line)
            if "Crawlsite is running at" in line:
                break
        text = "".join(output)
        assert f"Crawlsite is running at {base}/" in text
        password = re.search(r"username: admin  password: (\S+)", text).group(1)

        # Every component alive (workers register a moment after the web server is up).
        health = None
        for _ in range(100):
            try:
                health = json.load(urllib.request.urlopen(f"{base}/healthz"))
            except urllib.error.HTTPError as exc:
                health = json.load(exc)
            if health["ok"]:
                break
            time.sleep(0.2)
        assert health["ok"], health
        assert health["workers"]["count"] == 2

        # Everything under var/ is private once the stack runs: database (and its WAL while open),
        # secret key, Redis's append-only file, password and URL, and what was there before.
        for name in ("db.sqlite3", "db.sqlite3-wal", "secret-key", "redis-password", "redis.url", "redis/appendonly.aof"):
            assert (var / name).exists(), name
        assert group_or_other_readable(var) == []

        final_url, page = _login(base, "admin", password)
        assert final_url == f"{base}/"
        assert "Overview" in page

        children = psutil.Process(proc.pid).children(recursive=True)
        descendants = {p.pid for p in children}
        assert len(descendants) >= 7  # redis, honcho, web, 2 workers, the tasks worker, conductor, demo site
        commands = []
        for child in children:
            try:
                commands.append(" ".join(child.cmdline()))
            except psutil.NoSuchProcess:
                pass
        assert any("rqworker tasks" in command for command in commands), commands

        # The demo project crawls the demo site in full: its port is open to crawls by default.
        crawl = crawl_the_demo(base, env)
        assert crawl["status"] == "finished", crawl
        assert crawl["counters"]["items"] == DEMO_PRODUCTS and crawl["counters"]["errors"] == 0, crawl
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
    assert "All stopped." in rest
    left = [pid for pid in descendants if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert left == []
    assert proc.returncode == 0
