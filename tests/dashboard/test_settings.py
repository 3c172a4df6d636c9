import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from crawlsite import env


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("PORT", "abc", "PORT='abc' is not a whole number"),
        ("PORT", "-4", "PORT=-4 is below the minimum of 1"),
        ("PORT", "70000", "PORT=70000 is above the maximum of 65535"),
    ],
)
def test_env_int_rejects_bad_values_naming_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ImproperlyConfigured, match="^" + message.replace("(", r"\(")):
        env.env_int(name, 8000, minimum=1, maximum=65535)


def test_allowed_networks_are_checked_entry_by_entry(monkeypatch):
    monkeypatch.setenv("CRAWLSITE_ALLOWED_NETWORKS", " 127.0.0.1:8001, [::1]:8001 ")
    assert env.env_allowed_networks() == "127.0.0.1:8001, [::1]:8001"
    monkeypatch.setenv("CRAWLSITE_ALLOWED_NETWORKS", "127.0.0.1:8001,[::1]:99999")
    with pytest.raises(ImproperlyConfigured, match=r"^CRAWLSITE_ALLOWED_NETWORKS: entry '\[::1\]:99999': the port"):
        env.env_allowed_networks()


def test_env_int_default_when_unset(monkeypatch):
    monkeypatch.delenv("PORT", raising=False)
    assert env.env_int("PORT", 8000) == 8000


def test_env_bool_accepts_common_spellings_and_rejects_others(monkeypatch):
    for value, expected in [("1", True), ("yes", True), ("off", False), ("", False)]:
        monkeypatch.setenv("DEBUG", value)
        assert env.env_bool("DEBUG", None) is expected
    monkeypatch.setenv("DEBUG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="DEBUG='maybe' is not a boolean"):
        env.env_bool("DEBUG", False)


@pytest.mark.parametrize(
    "url,fragment",
    [
        ("localhost:6379", "must start with redis://"),
        ("http://localhost", "must start with redis://"),
        ("redis://", "names no host"),
        ("redis://host:notaport/0", "is not a valid URL"),
        ("redis://host:6379/abc", "database number"),
        ("unix://", "names no socket path"),
    ],
)
def test_redis_url_check_names_the_problem(url, fragment):
    with pytest.raises(ImproperlyConfigured, match=fragment) as info:
        env.check_redis_url("REDIS_URL", url)
    assert str(info.value).startswith("REDIS_URL=")


def test_redis_url_check_accepts_real_urls():
    for url in ("redis://localhost:6379/0", "rediss://:secret@example.com:6380/2", "unix:///tmp/redis.sock"):
        assert env.check_redis_url("REDIS_URL", url) == url


def test_database_url_accepts_sqlite_and_postgres():
    assert env.check_database_url("DATABASE_URL", "sqlite:////tmp/x.sqlite3")["ENGINE"].endswith("sqlite3")
    config = env.check_database_url("DATABASE_URL", "postgres://u:p@db:5432/crawlsite")
    assert config["ENGINE"].endswith("postgresql") and config["NAME"] == "crawlsite"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "nonsense", "postgres://u@h:5432/"])
def test_database_url_rejects_what_it_cannot_use(url):
    with pytest.raises(ImproperlyConfigured, match="^DATABASE_URL="):
        env.check_database_url("DATABASE_URL", url)


@pytest.mark.parametrize(
    "variable,value,line",
    [
        ("DEBUG", "perhaps", "Configuration error: DEBUG='perhaps' is not a boolean"),
        ("REDIS_URL", "localhost:6379", "Configuration error: REDIS_URL='localhost:6379' must start with"),
        ("CONDUCTOR_TICK", "fast", "Configuration error: CONDUCTOR_TICK='fast' is not a number"),
        ("LOG_LEVEL", "LOUD", "Configuration error: LOG_LEVEL='LOUD' must be one of"),
        ("CRAWLSITE_ALLOWED_NETWORKS", "10.0.0.0/8,10.0.0.1/8",
         "Configuration error: CRAWLSITE_ALLOWED_NETWORKS: entry '10.0.0.1/8' is not a valid address or network"),
    ],
)
def test_manage_py_stops_with_one_line_on_a_bad_setting(variable, value, line, tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env={"PATH": "/usr/bin:/bin", variable: value, "CRAWLSITE_VAR_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert result.stderr.strip().startswith(line)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
