"""Deployed Scrapy projects ("packages"): reading an upload safely, listing its spiders in a
subprocess, and, on a worker, fetching a version once from Redis into a local cache.

An upload is an egg (``bdist_egg``, as ``scrapyd-deploy`` builds it: its
``EGG-INFO/entry_points.txt`` names the settings module under ``[scrapy]``) or a zip of a Scrapy
project (its ``scrapy.cfg``, at the top or in one top folder, names it under ``[settings]``).
Nothing is ever extracted: Python imports straight from the archive (``zipimport``), so the only
thing read in the web process is the archive's directory and one small text file, with limits on
the number of entries, their names and their total size (:func:`describe`).

Spiders are listed by ``python -m crawler.packages inspect FILE MEMORY CPU``, a subprocess with a time limit,
a memory limit and no secrets in its environment (:func:`inspect`): it loads the project's
settings and asks Scrapy's spider loader for the names, answering JSON on stdout; when the
project's code fails to import, its traceback is the error.

A worker gets the archive's bytes from the crawl's Redis state (written at launch, key named by
the version's sha256), checks the hash, and keeps it in ``CRAWLSITE_VAR_DIR/packages`` (atomic
write, mode 0600); a later crawl of the same version on that machine reads the file.
"""

from __future__ import annotations

import configparser
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import keys

__all__ = ["PackageError", "Archive", "describe", "inspect", "fetch", "activate", "load_settings"]

ROOT = Path(__file__).resolve().parents[1]
MAX_ENTRIES = 10_000
MAX_UNPACKED = 256 * 1024 * 1024  # total uncompressed size of an archive's files
MAX_CONFIG_BYTES = 64 * 1024  # scrapy.cfg or entry_points.txt
INSPECT_TIMEOUT = 60.0
INSPECT_MEMORY = 2 * 1024 ** 3
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class PackageError(ValueError):
    """An upload or a deployed version that cannot be used; the message is for the user."""


@dataclass(frozen=True)
class Archive:
    kind: str  # "egg" or "zip"
    settings_module: str
    root: str  # folder inside the archive that goes on sys.path ("" = the archive itself)

    def sys_path(self, file: str | os.PathLike) -> str:
        return os.path.join(os.fspath(file), self.root) if self.root else os.fspath(file)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_name(name: str) -> None:
    parts = name.split("/")
    if (name.startswith("/") or "\\" in name or "\x00" in name or ".." in parts
            or re.match(r"^[A-Za-z]:", name) or len(name) > 1024):
        raise PackageError(f"The archive holds an unsafe file name ({name[:100]!r}): absolute paths, '..', "
                           "backslashes and drive letters are refused.")


def _read_config(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> configparser.ConfigParser:
    if info.file_size > MAX_CONFIG_BYTES:
        raise PackageError(f"{info.filename} is larger than {MAX_CONFIG_BYTES // 1024} KiB.")
    with zf.open(info) as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise PackageError(f"{info.filename} is larger than {MAX_CONFIG_BYTES // 1024} KiB.")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(raw.decode("utf-8"), source=info.filename)
    except (UnicodeDecodeError, configparser.Error) as exc:
        raise PackageError(f"{info.filename} cannot be read: {exc}") from None
    return parser


def _module(value: str | None, where: str) -> str:
    value = (value or "").strip()
    if not value:
        raise PackageError(f"It contains no Scrapy project: {where} names no settings module.")
    if not _MODULE_RE.match(value) or len(value) > 200:
        raise PackageError(f"{where} names {value[:100]!r}, which is not a Python module path.")
    return value


def describe(data: bytes, max_unpacked: int = MAX_UNPACKED) -> Archive:
    """What an uploaded archive is, read without extracting or importing anything.

    Raises :class:`PackageError` when it is not a zip or egg, is unsafe (names, entry count,
    total size: zip bombs), or holds no Scrapy project.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError):
        raise PackageError("The upload is not a zip or egg file (a Scrapy project zipped, or an egg "
                           "built by scrapyd-deploy).") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ENTRIES:
            raise PackageError(f"The archive holds {len(infos)} entries; at most {MAX_ENTRIES} are accepted.")
        total = 0
        by_name = {}
        for info in infos:
            _check_name(info.filename)
            total += info.file_size
            by_name[info.filename] = info
        if total > max_unpacked:
            raise PackageError(f"The archive unpacks to {total} bytes; at most {max_unpacked} are accepted.")
        entry_points = by_name.get("EGG-INFO/entry_points.txt")
        if entry_points is not None:
            config = _read_config(zf, entry_points)
            value = config.get("scrapy", "settings", fallback=None)
            return Archive("egg", _module(value, "EGG-INFO/entry_points.txt ([scrapy] settings)"), "")
        cfgs = sorted((n for n in by_name if n == "scrapy.cfg" or re.match(r"^[^/]+/scrapy\.cfg$", n)),
                      key=len)
        if not cfgs:
            raise PackageError("It contains no Scrapy project: no scrapy.cfg at its top (or in one top "
                               "folder) and no egg entry point naming a settings module.")
        config = _read_config(zf, by_name[cfgs[0]])
        value = config.get("settings", "default", fallback=None)
        root = cfgs[0][: -len("scrapy.cfg")].rstrip("/")
        return Archive("zip", _module(value, f"{cfgs[0]} ([settings] default)"), root)


def load_settings(archive: Archive, file: str | os.PathLike):
    """The project's own Scrapy settings, its code importable from ``file`` (put on sys.path)."""
    from scrapy.settings import Settings

    activate(archive, file)
    settings = Settings()
    settings.setmodule(archive.settings_module, priority="project")
    return settings


def activate(archive: Archive, file: str | os.PathLike) -> None:
    entry = archive.sys_path(file)
    if entry not in sys.path:
        sys.path.insert(0, entry)


# -- inspection (subprocess) ----------------------------------------------------------------------

def _inspect_here(path: str) -> dict:
    from scrapy.spiderloader import get_spider_loader

    data = Path(path).read_bytes()
    archive = describe(data)
    settings = load_settings(archive, path)
    loader = get_spider_loader(settings)
    return {"settings_module": archive.settings_module, "kind": archive.kind, "spiders": sorted(loader.list())}


def _limit_self(memory: int, seconds: float) -> None:
    """Limits of the inspecting process, set by itself first thing (``preexec_fn`` is not safe
    in a threaded web server)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = int(seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))


def inspect(data: bytes, timeout: float = INSPECT_TIMEOUT, memory: int = INSPECT_MEMORY) -> dict:
    """``{"settings_module", "kind", "spiders"}`` of an archive, found by a subprocess that imports
    the project (never this process). Raises :class:`PackageError` with the project's traceback
    when its settings or spiders fail to import, or when it takes longer than ``timeout``."""
    describe(data)
    with tempfile.TemporaryDirectory(prefix="crawlsite-inspect-") as tmp:
        file = Path(tmp) / "upload.zip"
        file.write_bytes(data)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": tmp,
               "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}  # no secrets of the web process
        try:
            done = subprocess.run([sys.executable, "-m", "crawler.packages", "inspect", str(file),
                                   str(memory), str(timeout)], cwd=tmp, env=env, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PackageError(f"Listing its spiders took longer than {timeout:g} s (a settings module or "
                               "spider that does work at import time?); nothing was stored.") from None
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip()[-4000:] or f"exit code {done.returncode}"
        raise PackageError(f"Its settings or spiders failed to import:\n{tail}")
    try:
        found = json.loads(done.stdout.decode("utf-8").strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise PackageError("Listing its spiders gave no answer (does the project print to stdout?).") from None
    if not found.get("spiders"):
        raise PackageError("Its Scrapy project has no spiders (SPIDER_MODULES finds none).")
    return found


# -- worker side: fetch once, check, cache --------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("CRAWLSITE_VAR_DIR") or ROOT / "var") / "packages"


def fetch(redis, code: str, digest: str, folder: Path | None = None) -> Path:
    """The local file of the version with sha256 ``digest``, fetched from crawl ``code``'s Redis
    state the first time (``redis``: a client that does not decode responses), checked against the
    hash, written atomically with mode 0600."""
    if not isinstance(digest, str) or not _SHA_RE.match(digest):
        raise PackageError(f"{digest!r} is not a sha256 digest")
    folder = folder or cache_dir()
    file = folder / f"{digest}.zip"
    if file.exists() and sha256(file.read_bytes()) == digest:
        return file
    data = redis.get(keys.package(code, digest))
    if data is None:
        raise PackageError(f"crawl {code}: the code of version {digest[:12]} is not in Redis")
    if sha256(data) != digest:
        raise PackageError(f"crawl {code}: the code in Redis does not match its sha256 {digest[:12]}; not used")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fetch-")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return file


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 4 or argv[0] != "inspect":
        print("usage: python -m crawler.packages inspect FILE MEMORY_BYTES CPU_SECONDS", file=sys.stderr)
        return 2
    _limit_self(int(argv[2]), float(argv[3]))
    found = _inspect_here(argv[1])  # an exception prints its traceback: the user's error
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
