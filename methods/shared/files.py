"""Writing files so that a kill at any moment leaves either the old file or the new one, never half of one.

Each write goes to a temporary file beside the target, then `os.replace` puts it in place: on POSIX
and Windows a rename within one folder is atomic, so a reader (or a later --resume) sees one whole
version. Records, weights, checkpoints and plots are all written this way.
"""
from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write to; on leaving the block it replaces `path` (on an error it is removed).

    The temporary name keeps the suffix (.png, .json, ...), so writers that go by it still work."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def finite_or_none(value):
    """JSON has no NaN or infinity: such a number is written as null (strict JSON readers refuse NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def write_json(path: str | Path, data) -> Path:
    """`data` as strict JSON (non-finite numbers as null), written atomically."""
    text = json.dumps(finite_or_none(data), indent=2, default=str, allow_nan=False)
    with atomic_path(path) as temporary:
        temporary.write_text(text + "\n")
    return Path(path)
