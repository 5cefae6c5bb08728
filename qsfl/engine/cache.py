"""A small on-disk cache for the batched engine's per-architecture facts (method verdict, dry-run bytes).

Building a batched engine checks its fast path against a reference and measures one step's tensors with a
dry run; the dry run imports torch's dispatch-mode machinery (``torch._dynamo``, hundreds of modules), which
dominates the start-up of a one-round ``qsfl simulate``. Both results depend only on the architecture, the
input shape, the device type, the torch version and this package's engine code, so they are kept on disk.

Location: ``$QSFL_CACHE_DIR`` if set (empty or ``off``: no disk cache), else ``$XDG_CACHE_HOME/qsfl-tune``,
else ``~/.cache/qsfl-tune``; one small JSON file per entry under ``engine/``, named by the SHA-256 of its key.
Each file repeats its full key, so a hash collision or a file from another version is a miss. A corrupt or
unreadable file is ignored (and rewritten); writes are atomic (temp file + rename), so concurrent workers
never read half a file; a cache that cannot be written is skipped silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = 1


def cache_dir() -> Path | None:
    """The engine cache directory, or None when disabled (``QSFL_CACHE_DIR`` empty or ``off``)."""
    env = os.environ.get("QSFL_CACHE_DIR")
    if env is not None:
        return None if env.strip() in ("", "off", "0", "none") else Path(env) / "engine"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qsfl-tune" / "engine"


def key_text(kind: str, key: Any) -> str:
    """The canonical text of a cache key (``kind`` plus JSON-able key material)."""
    return json.dumps({"format": FORMAT, "kind": kind, "key": key}, sort_keys=True, default=repr)


def _path(kind: str, text: str) -> Path | None:
    root = cache_dir()
    if root is None:
        return None
    return root / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"


def load(kind: str, key: Any) -> Any | None:
    """The value stored for (kind, key), or None (missing, disabled, corrupt, or another key's file)."""
    text = key_text(kind, key)
    path = _path(kind, text)
    if path is None or not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.debug("engine cache: ignoring unreadable %s: %s", path, exc)
        return None
    if not isinstance(entry, dict) or entry.get("key") != text or "value" not in entry:
        log.debug("engine cache: ignoring %s (another key or a corrupt entry)", path)
        return None
    return entry["value"]


def store(kind: str, key: Any, value: Any) -> None:
    """Remember ``value`` (JSON-able) for (kind, key); failures to write are logged and ignored."""
    text = key_text(kind, key)
    path = _path(kind, text)
    if path is None:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"key": text, "value": value}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("engine cache: cannot write %s: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


_SOURCE_HASHES: dict[str, str] = {}


def source_hash(*files: str) -> str:
    """SHA-256 (prefix) of the given source files, so a change to the engine's code invalidates its entries."""
    joined = "|".join(files)
    if joined not in _SOURCE_HASHES:
        digest = hashlib.sha256()
        for name in files:
            try:
                digest.update(Path(name).read_bytes())
            except OSError:
                digest.update(name.encode())
        _SOURCE_HASHES[joined] = digest.hexdigest()[:16]
    return _SOURCE_HASHES[joined]
