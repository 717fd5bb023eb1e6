"""Directories that appear whole or not at all.

A converted, quantised or exported model is written into a temporary sibling of its
target and renamed into place only when every file is complete, so a crash or a full
disk mid-write never leaves a directory that looks finished but is not, and a
replaced directory is swapped out in one rename.

    with staged_directory(out, overwrite=False) as tmp:
        write files under tmp
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


def refuse_nonempty(directory: str, overwrite: bool) -> None:
    if os.path.exists(directory) and os.listdir(directory) and not overwrite:
        raise FileExistsError(f"{directory} exists and is not empty (overwrite=True or --overwrite replaces it)")


def staging_directory(directory: str) -> str:
    """A new empty directory beside `directory` (same filesystem, so the final rename is atomic)."""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(dir=parent, prefix=os.path.basename(os.path.normpath(directory)) + ".tmp-")


def commit_directory(tmp: str, directory: str) -> None:
    """Move a fully written temporary directory to `directory`, replacing what was there."""
    old = None
    if os.path.exists(directory):
        old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(directory)),
                               prefix=os.path.basename(os.path.normpath(directory)) + ".old-")
        os.rmdir(old)
        os.rename(directory, old)
    os.rename(tmp, directory)
    if old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(directory: str, overwrite: bool = False):
    """Yield a temporary directory; when the block finishes it becomes `directory`, when
    the block raises it is deleted and `directory` is left as it was. A non-empty
    `directory` is refused unless overwrite."""
    refuse_nonempty(directory, overwrite)
    tmp = staging_directory(directory)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_directory(tmp, directory)
