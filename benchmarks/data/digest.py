"""What data a run saw, as one digest: ``dataset.json`` and the bytes of every case file it uses.

The digest is part of the run key, so re-preparing a dataset (another intensity window, another
protocol), pointing ``--data`` at other files, or editing one case gives new run keys instead of
silently reusing runs of other data. Two folders holding the same bytes give the same digest.

File hashes are cached by ``(path, size, mtime_ns)`` in ``<cache>/file-sha256.json`` (the cache
folder is ``$ORGANBENCH_CACHE`` or ``.cache/organbench``), so a launch stats files instead of
re-hashing gigabytes; a file whose size or modification time changed is hashed again.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

from benchmarks.data.nifti import DatasetInfo

CACHE_FILE_NAME = "file-sha256.json"


def cache_dir() -> Path:
    """``$ORGANBENCH_CACHE`` or ``<project>/.cache/organbench`` (shared with the text-embedding cache)."""
    from benchmarks.config import PROJECT_ROOT
    return Path(os.environ.get("ORGANBENCH_CACHE") or PROJECT_ROOT / ".cache" / "organbench")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FileHashCache:
    """sha256 of files, remembered by ``(size, mtime_ns)``; written atomically, merged with what
    other processes wrote meanwhile (entries only ever describe the file's current bytes)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / CACHE_FILE_NAME
        self.entries: dict[str, list] = self._read()
        self.dirty = False

    # The cache file as last read by this process, by path: (size, mtime_ns) of the file, its entries.
    # A launch builds several plans and the tests many; the file holds an entry per case file ever hashed.
    _read_before: dict[Path, tuple[tuple[int, int], dict[str, list]]] = {}

    def _read(self) -> dict[str, list]:
        try:
            st = self.path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
            known = self._read_before.get(self.path)
            if known is not None and known[0] == stamp:
                return dict(known[1])
            data = json.loads(self.path.read_text())
            entries = data if isinstance(data, dict) else {}
            self._read_before[self.path] = (stamp, entries)
            return dict(entries)
        except (OSError, ValueError):
            return {}

    def sha256(self, path: Path) -> str:
        """The file's sha256 (from the cache when its size and mtime are unchanged)."""
        path = Path(path).resolve()
        stat = path.stat()
        key = str(path)
        entry = self.entries.get(key)
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry[2]
        value = _sha256(path)
        self.entries[key] = [stat.st_size, stat.st_mtime_ns, value]
        self.dirty = True
        return value

    def save(self) -> None:
        """Write the cache (best effort: an unwritable cache folder only costs re-hashing); entries of
        files that no longer exist are dropped."""
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merged = {k: v for k, v in {**self._read(), **self.entries}.items() if os.path.exists(k)}
            fd, tmp = tempfile.mkstemp(prefix=".file-sha256.", dir=self.path.parent)
            with os.fdopen(fd, "w") as handle:
                json.dump(merged, handle)
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            pass


def dataset_digest(info: DatasetInfo, case_ids: Iterable[str], cache: FileHashCache | None = None) -> str:
    """sha256 (first 16 hex digits) over the content of ``dataset.json`` and the image and label bytes
    of ``case_ids``.

    ``dataset.json`` carries the class map, the intensity window and rule, the preparation protocol
    (``preprocessing``) of a real release and the generator and its version of a synthetic cohort.
    """
    cache = cache or FileHashCache()
    digest = hashlib.sha256()
    meta = json.loads((info.root / "dataset.json").read_text())
    digest.update(json.dumps(meta, sort_keys=True).encode())  # its content: formatting does not count
    for case_id in sorted(set(case_ids)):
        digest.update(f"\n{case_id}:{cache.sha256(info.image_path(case_id))}:"
                      f"{cache.sha256(info.label_path(case_id))}".encode())
    cache.save()
    return digest.hexdigest()[:16]
