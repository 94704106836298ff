"""The decoded-image cache: every file decoded and resized once into a uint8 memory map.

A cache is one folder ``<cache_dir>/<key>/`` holding ``images.npy`` (N x 3 x S x S, uint8,
one row per candidate file, read with ``mmap_mode``) and ``meta.json`` (each file's size,
mtime and scan verdict). The key hashes the dataset root, the file list with each file's
size and mtime, the image size, the non-square policy and the decoder version, so a changed,
added or removed file, or another image size, never reads a stale row.

Writes are atomic: a cache is built in a temporary folder and renamed into place only when
complete, so a killed build leaves nothing that is later trusted. A rebuild of the same
dataset copies the rows of unchanged files from its predecessor instead of decoding them again.

What a cache reads back names only places inside its own roots: a cache key (a lineage pointer's
content) is a digest naming a real folder of the cache directory, not a link out of it, and each file
of ``meta.json`` is a relative path inside the dataset. Anything else was not written here, and the
command stops (DataError) before it reads or writes through it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_text, strict_json
from ..errors import DataError

# Bump when decoding changes (draft mode, EXIF, crop, resampling): old caches are then never read.
DECODER_VERSION = 3  # 3: entries carry the inode change time
HEADROOM_BYTES = 256 * 2**20  # leave this much free on the disk after the cache
# A superseded cache may still be mapped by a running train or a second build: it is removed only once it
# has been superseded this long (a process maps its cache once, so a later removal cannot hurt it).
RECLAIM_AFTER_S = 24 * 3600
_KEY = re.compile(r"[0-9a-f]{32}")  # what _digest gives: the only names a cache folder has


@dataclass(frozen=True)
class FileEntry:
    relpath: str
    size: int
    mtime_ns: int
    ctime_ns: int  # a file replaced with equal size and mtime (cp -p, rsync -t, unpacked archives) changes it


@dataclass
class FileVerdict:
    """What the scan learnt about one file: why it is unusable (None = usable), and its shape."""

    problem: str | None
    non_square: bool = False
    transient: bool = False  # an I/O error (EIO, EMFILE, ...), not a decoding failure: never cached


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeface"


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()[:32]


def cache_key(root: Path, entries: Sequence[FileEntry], image_size: int, non_square: str) -> str:
    listing = [[entry.relpath, entry.size, entry.mtime_ns, entry.ctime_ns] for entry in entries]
    return _digest([DECODER_VERSION, str(root.resolve()), image_size, non_square, listing])


def _lineage(root: Path, image_size: int, non_square: str) -> str:
    """Names the dataset (not its contents): where the latest cache of this root and size is recorded."""
    return _digest(["lineage", DECODER_VERSION, str(root.resolve()), image_size, non_square])


@dataclass
class CachedImages:
    """A finished cache. ``array()`` maps it once per process, on first use (worker processes map their own)."""

    directory: Path
    count: int
    image_size: int
    verdicts: list[FileVerdict]
    entries: list[FileEntry]
    _mapped: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def path(self) -> Path:
        return self.directory / "images.npy"

    def array(self) -> np.ndarray:
        if self._mapped is None:
            self._mapped = np.load(self.path, mmap_mode="r")
        return self._mapped

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mapped": None}  # a worker process maps the file itself


def _relative_inside(relpath: str) -> bool:
    """A dataset file's path as the scan records it: relative, with no ``..`` (so it stays inside the root)."""
    parts = relpath.split("/")
    return bool(relpath) and "\x00" not in relpath and not relpath.startswith("/") and ".." not in parts


def _cache_folder(cache_dir: Path, key: str, named_by: Path | None = None) -> Path:
    """``cache_dir/key``, when ``key`` is a cache key and that folder is not a link out of ``cache_dir``."""
    source = f"{named_by} names" if named_by is not None else "asked for"
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise DataError(f"{source} the decoded-image cache {key!r}, which is not a cache key this tool writes; "
                        f"remove {named_by or 'it'} (the cache is rebuilt) or set data.cache=off")
    directory = cache_dir / key
    if directory.is_symlink() or (directory.exists() and directory.resolve().parent != cache_dir.resolve()):
        raise DataError(f"the decoded-image cache {directory} is a link out of {cache_dir}, which this tool never "
                        "makes; remove it (the cache is rebuilt) or set data.cache=off")
    return directory


def _read_meta(directory: Path) -> dict[str, Any] | None:
    """The cache's meta.json when it is one this decoder wrote whole; None for a damaged one (rebuilt).
    DataError when it names a file outside the dataset (never written here)."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("decoder") != DECODER_VERSION:
        return None
    files, image_size = meta.get("files"), meta.get("image_size")
    if (not isinstance(files, list) or not isinstance(image_size, int) or isinstance(image_size, bool)
            or not all(isinstance(item, list) and len(item) >= 6 and isinstance(item[0], str)
                       and all(isinstance(value, int) for value in item[1:4])
                       and (item[4] is None or isinstance(item[4], str)) for item in files)):
        return None
    for item in files:
        if not _relative_inside(item[0]):
            raise DataError(f"{directory / 'meta.json'} lists {item[0]!r}, which is not inside the dataset; this "
                            f"tool never writes that: remove {directory} (the cache is rebuilt) or set data.cache=off")
    return meta


def open_cache(cache_dir: Path, key: str) -> CachedImages | None:
    """The finished cache for ``key``, or None (never built, or damaged)."""
    directory = _cache_folder(cache_dir, key)
    meta = _read_meta(directory)
    if meta is None or meta.get("key") != key or not (directory / "images.npy").is_file():
        return None
    entries = [FileEntry(*item[:4]) for item in meta["files"]]
    verdicts = [FileVerdict(item[4], bool(item[5])) for item in meta["files"]]
    try:
        array = np.load(directory / "images.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if array.shape != (len(entries), 3, meta["image_size"], meta["image_size"]):
        return None
    (directory / "superseded").unlink(missing_ok=True)  # current again (the files went back to this state)
    return CachedImages(directory, len(entries), int(meta["image_size"]), verdicts, entries)


def required_bytes(count: int, image_size: int) -> int:
    return count * 3 * image_size * image_size


def check_space(cache_dir: Path, count: int, image_size: int) -> str | None:
    """None when a cache of this size fits on the cache disk (with headroom), else why not."""
    probe = cache_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError as exc:
        return f"cannot inspect {cache_dir}: {exc.strerror or exc}"
    needed = required_bytes(count, image_size)
    if free < needed + HEADROOM_BYTES:
        return f"the decoded-image cache needs {needed / 2**30:.2f} GiB but {probe} has {free / 2**30:.2f} GiB free"
    return None


class CacheBuilder:
    """Fills a new cache in a temporary folder; ``finish`` renames it into place, ``abort`` removes it."""

    def __init__(self, cache_dir: Path, key: str, root: Path, entries: Sequence[FileEntry], image_size: int,
                 non_square: str) -> None:
        self.cache_dir = cache_dir
        self.key = key
        self.entries = list(entries)
        self.image_size = image_size
        self.lineage = _lineage(root, image_size, non_square)
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(cache_dir)
        if (cache_dir / key).exists() and open_cache(cache_dir, key) is None:
            shutil.rmtree(cache_dir / key, ignore_errors=True)  # damaged (finished caches are renamed in whole)
        self.tmp = cache_dir / f".build-{key}-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self.array = np.lib.format.open_memmap(
            self.tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(self.entries), 3, image_size, image_size)
        )
        # Reserve the blocks now: a disk that fills during the build is an OSError here (the documented fallback,
        # or a clear error), never a SIGBUS when a page of a sparse file cannot be backed later.
        if hasattr(os, "posix_fallocate"):  # Linux and the BSDs; macOS has none
            try:
                with open(self.tmp / "images.npy", "r+b") as stream:
                    os.posix_fallocate(stream.fileno(), 0, os.fstat(stream.fileno()).st_size)
            except OSError:
                self.abort()
                raise
        self.predecessor = self._predecessor()

    def _predecessor(self) -> tuple[CachedImages, dict[FileEntry, int]] | None:
        """The previous cache of the same dataset and size: rows of unchanged files are copied, not decoded."""
        pointer = self.cache_dir / "lineage" / self.lineage
        try:
            previous_key = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        _cache_folder(self.cache_dir, previous_key, named_by=pointer)  # a key, not a path: checked before use
        previous = open_cache(self.cache_dir, previous_key) if previous_key != self.key else None
        if previous is None or previous.image_size != self.image_size:
            return None
        usable = {entry: row for row, entry in enumerate(previous.entries) if previous.verdicts[row].problem is None}
        return previous, usable

    def reuse(self, index: int) -> FileVerdict | None:
        """Copy file ``index``'s row from the predecessor when that file is unchanged; its verdict, else None."""
        if self.predecessor is None:
            return None
        previous, usable = self.predecessor
        row = usable.get(self.entries[index])
        if row is None:
            return None
        self.array[index] = previous.array()[row]
        return previous.verdicts[row]

    def write(self, index: int, pixels: np.ndarray) -> None:
        self.array[index] = pixels

    def finish(self, verdicts: Sequence[FileVerdict]) -> CachedImages:
        self.array.flush()
        del self.array
        _fsync(self.tmp / "images.npy")
        meta = {
            "decoder": DECODER_VERSION, "key": self.key, "image_size": self.image_size,
            "files": [[e.relpath, e.size, e.mtime_ns, e.ctime_ns, v.problem, v.non_square]
                      for e, v in zip(self.entries, verdicts)],
        }
        (self.tmp / "meta.json").write_text(strict_json(meta), encoding="utf-8")
        _fsync(self.tmp / "meta.json")
        final = self.cache_dir / self.key
        try:
            os.rename(self.tmp, final)
        except OSError:  # another process finished the same cache first: keep theirs
            shutil.rmtree(self.tmp, ignore_errors=True)
        atomic_write_text(self.cache_dir / "lineage" / self.lineage, self.key)
        if self.predecessor is not None:  # superseded: reclaimed once no running process can still need it
            _mark_superseded(self.predecessor[0].directory)
        _reclaim_superseded(self.cache_dir)
        cached = open_cache(self.cache_dir, self.key)
        if cached is None:
            raise DataError(f"the decoded-image cache in {final} could not be read back; set data.cache=off")
        return cached

    def abort(self) -> None:
        if hasattr(self, "array"):
            del self.array
        shutil.rmtree(self.tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    with path.open("rb") as stream:
        os.fsync(stream.fileno())


def _mark_superseded(directory: Path) -> None:
    try:
        (directory / "superseded").write_text(str(time.time()), encoding="utf-8")
    except OSError:
        pass


def _reclaim_superseded(cache_dir: Path, now: float | None = None) -> None:
    """Caches superseded more than RECLAIM_AFTER_S ago are removed (a process still reading one holds its map)."""
    now = time.time() if now is None else now
    for marker in cache_dir.glob("*/superseded"):
        if marker.parent.is_symlink() or not _KEY.fullmatch(marker.parent.name):
            continue  # not a cache folder of ours: never removed
        try:
            since = float(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if now - since > RECLAIM_AFTER_S:
            shutil.rmtree(marker.parent, ignore_errors=True)


def _remove_stale_builds(cache_dir: Path) -> None:
    """Temporary folders of killed builds, of any key (their process is gone), are removed."""
    for leftover in cache_dir.glob(".build-*-*"):
        pid_text = leftover.name.rsplit("-", 1)[-1]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
