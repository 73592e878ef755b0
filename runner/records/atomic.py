"""Files written whole or not at all: a temporary file in the same directory, then one rename.

A run's records, reports and markers are never seen half-written, even after a crash or a full disk; the
temporary file is removed when writing fails. Files get the permissions any other output would (mkstemp makes
0600), from the process's umask.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, write) -> Path:
    """`write(binary handle)` fills a temporary file beside `path`, which then replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json_file(path: Path, obj) -> Path:
    """JSON as written to records (indented, with a final newline); secrets are the caller's to mask."""
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc/self/status, kernel 4.7+): setting
    and restoring it would, for a moment, give files created by other threads the wrong permissions."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
