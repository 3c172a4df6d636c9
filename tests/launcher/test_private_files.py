"""var/ is private (issue 11): 0600 files, 0700 folders, and a secret key made atomically."""

import os
import stat
import subprocess
import sys
from pathlib import Path

from crawlsite.private_files import make_tree_private

ROOT = Path(__file__).resolve().parents[2]

RACER = """
import os, sys, time
from pathlib import Path
start = Path(sys.argv[1])
while not start.exists():   # every racer is up and waiting: they all go at once
    time.sleep(0.001)
from crawlsite.private_files import read_or_create_secret
print(read_or_create_secret(Path(sys.argv[2]), lambda: os.urandom(24).hex()))
"""

SETTINGS = ("import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'crawlsite.settings'; django.setup();"
            "from django.conf import settings; print(settings.SECRET_KEY)")


def racers(tmp_path, count, args):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "CRAWLSITE_VAR_DIR": str(tmp_path / "var")}
    return [subprocess.Popen([sys.executable, "-c", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(count)]


def outputs(procs):
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(out.strip().splitlines()[-1])
    return results


def test_processes_starting_at_once_all_get_the_same_secret(tmp_path):
    start, secret = tmp_path / "go", tmp_path / "var" / "secret-key"
    procs = racers(tmp_path, 12, [RACER, str(start), str(secret)])
    start.touch()
    keys = outputs(procs)
    assert len(set(keys)) == 1 and len(keys[0]) == 48
    assert secret.read_text().strip() == keys[0]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in secret.parent.iterdir()) == ["secret-key"]  # no temporary file left


def test_settings_loaded_by_several_processes_at_once_agree_on_the_key(tmp_path):
    keys = outputs(racers(tmp_path, 6, [SETTINGS]))
    assert len(set(keys)) == 1
    var = tmp_path / "var"
    assert (var / "secret-key").read_text().strip() == keys[0]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in var.iterdir()}
    assert modes == {"secret-key": 0o600, "db.sqlite3": 0o600}
    assert stat.S_IMODE(var.stat().st_mode) == 0o700


def test_existing_var_gets_private_modes(tmp_path):
    var = tmp_path / "var"
    (var / "redis").mkdir(parents=True, mode=0o755)
    for name, mode in [("db.sqlite3", 0o644), ("db.sqlite3-wal", 0o666), ("redis/appendonly.aof", 0o644),
                       ("secret-key", 0o640), ("run.sh", 0o755)]:
        (var / name).write_text("x")
        (var / name).chmod(mode)
    var.chmod(0o755)
    outside = tmp_path / "outside"
    outside.write_text("not ours to change")
    outside.chmod(0o644)
    (var / "link").symlink_to(outside)

    make_tree_private(var)

    assert stat.S_IMODE(var.stat().st_mode) == 0o700
    assert stat.S_IMODE((var / "redis").stat().st_mode) == 0o700
    for name in ("db.sqlite3", "db.sqlite3-wal", "redis/appendonly.aof", "secret-key"):
        assert stat.S_IMODE((var / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((var / "run.sh").stat().st_mode) == 0o700  # the owner keeps what it had
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # a symlink's target is left alone


def test_an_empty_secret_file_is_reported(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "CRAWLSITE_VAR_DIR": str(tmp_path)}
    (tmp_path / "secret-key").write_text("")
    result = subprocess.run([sys.executable, "-c", SETTINGS], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "secret-key is empty; delete it" in result.stderr


def group_or_other_readable(root):
    """Every path under ``root`` (not following links) that group or other may read, write or enter."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = Path(folder) / name
            info = path.lstat()
            if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o077:
                found.append((str(path), oct(stat.S_IMODE(info.st_mode))))
    return found
