"""Local data under var/ is private to the account that runs Crawlsite (issue 11).

The SQLite database holds password hashes and session keys, the secret key signs sessions, and
Redis's files hold every crawl: folders are 0700 and files 0600. `make run` sets umask 077 for
every process it starts and fixes the modes of a var/ made by an older version; settings make
the folder, the secret key and the database file private for commands run by hand as well.
"""

import os
import stat
import tempfile
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(path):
    """Create ``path`` (and parents) as 0700 if missing; make it 0700 if it exists."""
    path = Path(path)
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != PRIVATE_DIR:
        path.chmod(PRIVATE_DIR)
    return path


def make_tree_private(root):
    """Take group and other rights away from everything under ``root`` (symlinks are skipped,
    never followed). Returns the paths whose mode changed."""
    root = make_private_dir(root)
    changed = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue  # removed while we walk (a Redis rewrite, a WAL checkpoint)
            if stat.S_ISLNK(info.st_mode):
                continue
            mode = stat.S_IMODE(info.st_mode)
            private = PRIVATE_DIR if stat.S_ISDIR(info.st_mode) else mode & ~0o077
            if mode != private:
                path.chmod(private)
                changed.append(path)
    return changed


def create_private_file(path):
    """Create ``path`` empty with mode 0600 unless it exists (an empty file is a valid SQLite db)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        pass


def read_or_create_secret(path, generate):
    """The text of ``path``; on first use a new secret from ``generate()``, written atomically.

    The secret is written and synced to a private temporary file first, then hard-linked to its
    name: linking fails if the name exists, so when two processes start at once one wins, and the
    other drops its own secret and reads the winner's, which is complete by then.
    """
    path = Path(path)
    if not path.exists():
        make_private_dir(path.parent)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(generate())
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(temp, path)
            except FileExistsError:
                pass  # another process won the race: its secret is the one
        finally:
            os.unlink(temp)
    secret = path.read_text().strip()
    if not secret:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{path} is empty; delete it and a new secret is made on the next start")
    return secret
