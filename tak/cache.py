"""On-disk cache of text embeddings: one small file per (encoder, weights sha256, text).

Layout: ``<root>/<encoder>/<key[:2]>/<key>.f32`` where ``key = sha256(encoder, weights sha256, text)``
(see :func:`entry_key`). A file holds a 32-byte sha256 checksum of ``key + payload`` followed by the
payload, the embedding as little-endian float32 (``dim * 4`` bytes). A file whose length or checksum
does not match (truncated, corrupt, renamed onto another key, another width) is ignored and
rewritten; writes go to a temporary file in the same folder and are renamed into place, so readers
never see half a file and concurrent writers of the same entry are harmless.

Root: ``$ORGANBENCH_CACHE/text-embeddings`` when ``ORGANBENCH_CACHE`` is set, otherwise
``<repo>/.cache/organbench/text-embeddings`` (git-ignored).

>>> entry_key("minilm", "ab" * 32, "liver") == entry_key("minilm", "ab" * 32, "liver")
True
>>> entry_key("minilm", "ab" * 32, "liver") == entry_key("minilm", "ab" * 32, "liver ")
False
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
_SUFFIX = ".f32"


def default_cache_dir() -> Path:
    """The text-embedding cache root (``$ORGANBENCH_CACHE/text-embeddings`` or the repo's ``.cache``)."""
    env = os.environ.get("ORGANBENCH_CACHE")
    base = Path(env).expanduser() if env else REPO_ROOT / ".cache" / "organbench"
    return base / "text-embeddings"


def entry_key(encoder: str, weights_sha256: str, text: str) -> str:
    """sha256 (hex) naming the cache entry of one text under one encoder and weight file set."""
    blob = json.dumps([encoder, weights_sha256, text], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def batch_key(encoder: str, weights_sha256: str, texts: Sequence[str]) -> str:
    """sha256 (hex) over the encoder, its weights' sha256 and every text in order (the run record's key)."""
    blob = json.dumps([encoder, weights_sha256, list(texts)], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Per-text embedding files of one encoder (``encoder``) with one weight set (``weights_sha256``)."""

    def __init__(self, encoder: str, weights_sha256: str, dim: int, root: str | Path | None = None) -> None:
        self.encoder = encoder
        self.weights_sha256 = weights_sha256
        self.dim = dim
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, text: str) -> Path:
        key = entry_key(self.encoder, self.weights_sha256, text)
        return self.root / self.encoder / key[:2] / f"{key}{_SUFFIX}"

    def get(self, text: str) -> torch.Tensor | None:
        """The cached ``(dim,)`` float32 embedding of ``text``, or None when absent or not trustworthy."""
        path = self.path(text)
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        checksum, payload = blob[:32], blob[32:]
        if len(payload) != self.dim * 4 or hashlib.sha256(path.stem.encode() + payload).digest() != checksum:
            return None
        vector = np.frombuffer(payload, dtype="<f4")
        if not np.all(np.isfinite(vector)):
            return None
        return torch.from_numpy(vector.astype(np.float32))

    def put(self, text: str, vector: torch.Tensor) -> Path:
        """Write the ``(dim,)`` embedding of ``text`` atomically (temporary file + rename); returns its path."""
        array = vector.detach().to("cpu", torch.float32).numpy().astype("<f4").reshape(-1)
        if array.shape != (self.dim,):
            raise ValueError(f"{self.encoder}: embedding has {array.shape[0]} values, expected {self.dim}")
        path = self.path(text)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = array.tobytes()
        blob = hashlib.sha256(path.stem.encode() + payload).digest() + payload
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:16]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob)   # no fsync: a torn file after a crash fails its checksum and is recomputed
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
