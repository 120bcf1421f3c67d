"""The one way this project writes a file: atomically, so a crash never leaves half of one.

Every writer (canonical weights, checkpoints, metrics, plots, spec files and
each framework's own weight files) goes through ``atomic_write``: the bytes go
to a temporary file in the destination's own folder (a rename is atomic only
within one file system), are flushed to disk, and the temporary file is then
renamed over the destination. A failure removes the temporary file and leaves
any old destination as it was.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from resnet_multi.errors import UserError


def check_destination(path: str | Path) -> Path:
    """The destination as a Path, or a one-line UserError: its folder is missing, or it is a folder itself."""
    if "\x00" in str(path):  # the OS refuses it with a ValueError, not an OSError
        raise UserError(f"{str(path)!r}: a file name cannot contain a NUL character")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a file name")
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"{path}: folder {folder} does not exist")
    return path


def atomic_write(path: str | Path, content: bytes | str | Callable[[Path], None], suffix: str = "") -> Path:
    """Write ``content`` to ``path`` atomically and return ``path``.

    ``content`` is the bytes or text to write, or a function that writes the
    temporary file it is given (for libraries that write files themselves:
    ``torch.save``, Keras ``save_weights``, matplotlib). ``suffix`` ends the
    temporary name, for writers that insist on an extension (Keras wants
    ``.weights.h5``, matplotlib picks the format from it).
    """
    path = check_destination(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial{suffix}")
    try:
        if callable(content):
            content(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
        with open(tmp, "rb+") as f:  # to disk before the rename, so the new name never points at a hole
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
