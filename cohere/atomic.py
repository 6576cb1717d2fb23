"""Atomic writes: build a temporary sibling, then rename it into place only when complete.

    with writing(Path("out/gen.csv")) as tmp:                # a file
        df.to_csv(tmp)
    with writing(Path("models/encoders/cna"), folder=True) as tmp:   # a folder
        (tmp / "config.json").write_text(...)

The temporary sibling is named ``.<name>.<8 hex>.tmp`` (:func:`is_temp` recognises it). It
is created as a normal write would create it: mode 0o666 (file) or 0o777 (folder) filtered
by the umask (or the folder's default ACL), not ``tempfile``'s 0o600 / 0o700, so a shared
models folder or store stays readable to the group. It is removed when the block fails or is
interrupted (any ``BaseException``, ``KeyboardInterrupt`` included); the target is then
exactly as before. A process killed outright (SIGKILL, power loss) can still leave one
behind; the store tidies its own (``Store._tidy``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path

_TEMP = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def temp_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(4)}.tmp"


def is_temp(name: str) -> bool:
    """Whether ``name`` (a file name, not a path) is a temporary name made by this module."""
    return bool(_TEMP.fullmatch(name))


def make_temp(parent: Path, name: str, folder: bool = False) -> Path:
    """Create an empty temporary file (or folder) for ``parent / name``, with normal permissions."""
    for _ in range(100):
        path = parent / temp_name(name)
        try:
            if folder:
                os.mkdir(path, 0o777)  # the kernel applies the umask, as for any new folder
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue
        except BaseException:  # interrupted (Ctrl-C, SIGTERM) once it may exist: the name is ours (O_EXCL)
            remove(path)
            raise
    raise FileExistsError(f"no free temporary name for {parent / name}")


def remove(path: Path) -> None:
    """Delete a file, a link (not what it points to) or a folder tree; nothing if absent."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)


def replace(src: Path, target: Path) -> None:
    """Move the finished ``src`` onto ``target``, replacing a file, link or folder there.

    A folder cannot be renamed over an existing folder, so the old one is first renamed to
    a temporary name (and put back if the second rename fails), then deleted.
    """
    real_dir = target.is_dir() and not target.is_symlink()
    if not real_dir and not (os.path.lexists(target) and src.is_dir() and not src.is_symlink()):
        os.replace(src, target)
        return
    old = target.parent / temp_name(target.name)
    os.replace(target, old)
    try:
        os.replace(src, target)
    except BaseException:
        os.replace(old, target)
        raise
    remove(old)


@contextlib.contextmanager
def writing(target: Path, folder: bool = False):
    """Yield a temporary sibling of ``target``; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:  # made inside the try: a SIGTERM just after it exists still removes it
        tmp = make_temp(target.parent, target.name, folder)
        yield tmp
        replace(tmp, target)
    finally:
        if tmp is not None:
            remove(tmp)
