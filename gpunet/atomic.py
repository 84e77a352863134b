"""Atomic files: write a temporary beside the target, fsync it, then `os.replace` it over the target.

A reader sees the old file or the new one, never half of one. Temporaries are named
`.<target name>.<writer pid>.<random><suffix>` and created like any new file (mode 0666 less the
umask), so a later writer of the same target can tell which ones were left by a killed process
(`remove_stale`) and the result has the mode every other file of the run folder has.
"""
from __future__ import annotations

import glob
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path


def temp_path(target, suffix: str = ".tmp") -> Path:
    """A fresh temporary name beside `target`, tagged with this process's id."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


@contextmanager
def atomic_write(target, suffix: str = ".tmp"):
    """Yield a temporary path to write; when the block succeeds it is fsynced and renamed over `target`,
    when it raises (or is interrupted) it is removed and `target` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target, suffix)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(target, suffix: str = ".tmp") -> list[Path]:
    """Remove the temporaries of `target` (files or folders) whose writer is no longer running, e.g. after a
    SIGKILL mid-write; those of live writers stay. Returns what was removed."""
    target = Path(target)
    removed = []
    for p in target.parent.glob(f".{glob.escape(target.name)}.*{suffix}"):
        pid, dot, token = p.name[len(target.name) + 2:len(p.name) - len(suffix)].partition(".")
        if dot and not (pid.isdigit() and len(token) == 8 and all(c in "0123456789abcdef" for c in token)):
            continue  # another file's temporary (".a.b.<pid>.<random>" is b's, not a's)
        if dot and _alive(int(pid)):
            continue  # no dot: an older gpunet's mkstemp name, its writer long gone
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


__all__ = ["atomic_write", "remove_stale", "temp_path"]
