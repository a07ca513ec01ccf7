"""Where omni keeps what it derives from models, and how it writes there safely.

The cache root is `$OMNI_CACHE_DIR`, else the platform's user cache dir (on Linux
`~/.cache/omni`). Every write is atomic: content is built under a temporary name in
the same folder and renamed into place only when complete, so a conversion killed
half-way leaves at most a stray temporary, never a file that later loads as broken.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    root = os.environ.get("OMNI_CACHE_DIR")
    path = Path(root).expanduser() if root else Path(platformdirs.user_cache_dir("omni"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def umask_mode(mode: int = 0o666) -> int:
    """`mode` as the umask lets a new file or folder have it (temporaries start at 0600/0700)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed to `final`, on failure removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, final)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes `final`, on failure it is removed.

    If another process finished the same folder first, theirs is kept.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        # Some writers (safetensors) create their files 0600 whatever the umask.
        for path in tmp.rglob("*"):
            if not path.is_symlink():
                os.chmod(path, umask_mode(0o777 if path.is_dir() else 0o666))
        os.chmod(tmp, umask_mode(0o777))
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
