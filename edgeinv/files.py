"""Writing outputs so that nothing is lost: a temporary file beside the target, renamed over it.

`atomic_path(path)` yields a temporary path in the target's folder; when the block finishes
the file is synced and renamed over `path`, and on any failure (disk full, Ctrl-C, a bug)
the temporary file is removed and the earlier `path`, if any, is untouched. Disk errors
become one-line `UserError`s that name the file.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeinv.errors import UserError

# OSErrors a user fixes (space, permissions, a read-only disk, a name too long), not bugs.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}


def disk_error(path: Path | str, error: OSError) -> UserError:
    """A one-line error for an OSError writing `path`."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some disk space (or choose another --out) and run again"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a folder you can write to"
    elif error.errno == errno.ENAMETOOLONG:
        fix = "choose a shorter name"
    else:
        fix = "choose another path"
    return UserError(f"{path}: cannot write ({error.strerror or error}); {fix}")


@contextmanager
def atomic_path(path: Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as error:
        raise disk_error(path, error) from None
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes files private; these are ordinary outputs
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if error.errno in DISK_ERRNOS:
            raise disk_error(path, error) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable_folder(folder: Path, option: str = "--out") -> None:
    """Fail early when `folder` (existing or to be created) cannot be written."""
    folder = Path(folder)
    if any(len(part.encode()) > 255 for part in folder.parts):
        raise UserError(f"{str(folder)[:60]}...: {option} has a name longer than 255 bytes; choose a shorter one")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: {option} is an existing file; give a folder (a new or empty one)")
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{existing}: is a file, so {option} {folder} cannot be created inside it; choose another {option}")
    if not os.access(existing, os.W_OK | os.X_OK) or os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise UserError(f"{existing}: not writable, so {option} {folder} cannot be written; choose a folder you can write to")
