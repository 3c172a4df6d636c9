"""HTTPS deployments (issue 11): HSTS and a redirect with SECURE_HTTPS=1, and X-Forwarded-Proto
believed only with BEHIND_PROXY=1, by Django and by uvicorn as the Procfile starts it."""

import http.client
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.test import Client

from launcher.redis import free_port
from launcher.run import web_proxy_flags

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_CODE = (
    "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='crawlsite.settings'; django.setup();"
    "from django.conf import settings as s;"
    "print(s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, s.SECURE_PROXY_SSL_HEADER, s.SECURE_REDIRECT_EXEMPT)"
)


def settings_with(tmp_path, **env):
    base = {"PATH": "/usr/bin:/bin", "CRAWLSITE_VAR_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", SETTINGS_CODE], env={**base, **env}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_secure_https_turns_on_redirect_and_a_year_of_hsts_but_not_proxy_trust(tmp_path):
    assert settings_with(tmp_path, SECURE_HTTPS="1") == "True 31536000 None ['^healthz$']"
    assert settings_with(tmp_path, SECURE_HTTPS="1", SECURE_HSTS_SECONDS="600").startswith("True 600 None")
    assert settings_with(tmp_path, SECURE_HTTPS="1", BEHIND_PROXY="1") == (
        "True 31536000 ('HTTP_X_FORWARDED_PROTO', 'https') ['^healthz$']"
    )
    assert settings_with(tmp_path).startswith("False 0 None")  # plain HTTP on one machine: nothing


@pytest.fixture
def https_settings(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    settings.SECURE_HSTS_SECONDS = 31_536_000
    settings.SECURE_PROXY_SSL_HEADER = None
    return settings


@pytest.mark.django_db
def test_plain_http_is_redirected_to_https_and_https_gets_hsts(https_settings):
    response = Client().get("/accounts/login/?next=/projects/")
    assert response.status_code == 301
    assert response["Location"] == "https://testserver/accounts/login/?next=/projects/"
    secure = Client().get("/accounts/login/", secure=True)
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"] == "max-age=31536000"


@pytest.mark.django_db
def test_healthz_answers_plain_http_for_load_balancers(https_settings):
    response = Client().get("/healthz")
    assert response.status_code in (200, 503)
    assert "ok" in response.json()


@pytest.mark.django_db
def test_forwarded_proto_from_a_client_is_not_believed_without_a_proxy(https_settings, owner):
    client = Client()
    client.force_login(owner)
    response = client.get("/", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 301 and response["Location"].startswith("https://")
    assert "Strict-Transport-Security" not in response


@pytest.mark.django_db
def test_forwarded_proto_is_believed_behind_a_proxy(https_settings, owner):
    https_settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    client = Client()
    client.force_login(owner)
    response = client.get("/", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 200
    assert response["Strict-Transport-Security"] == "max-age=31536000"
    assert client.get("/").status_code == 301  # the proxy said http


# -- uvicorn as the Procfile runs it -----------------------------------------------------------------

def procfile_command(name):
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} process in the Procfile")


def start_web(tmp_path, behind_proxy):
    from django.conf import settings

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        WEB_HOST="127.0.0.1", WEB_PORT=str(port), CRAWLSITE_VAR_DIR=str(tmp_path), REDIS_URL=settings.REDIS_URL,
        SECURE_HTTPS="1", BEHIND_PROXY="1" if behind_proxy else "0", FORWARDED_ALLOW_IPS="127.0.0.1",
        WEB_PROXY_FLAGS=web_proxy_flags({"behind_proxy": behind_proxy}),
    )
    proc = subprocess.Popen(["sh", "-c", procfile_command("web")], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=2).connect()
            return proc, port
        except OSError:
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("uvicorn did not start")


def get(port, path, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, {name.lower(): value for name, value in response.getheaders()}
    finally:
        conn.close()


@pytest.mark.parametrize("behind_proxy", [False, True])
def test_uvicorn_believes_forwarded_headers_only_behind_a_proxy(tmp_path, behind_proxy):
    """The client, on this very machine (uvicorn's default trusted address), claims HTTPS."""
    assert "$WEB_PROXY_FLAGS" in shlex.split(procfile_command("web"))
    proc, port = start_web(tmp_path, behind_proxy)
    try:
        status, headers = get(port, "/accounts/login/", {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.5"})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if behind_proxy:
        assert status == 200 and headers["strict-transport-security"] == "max-age=31536000"
    else:
        assert status == 301 and headers["location"] == f"https://127.0.0.1:{port}/accounts/login/"
