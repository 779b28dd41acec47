"""Zip extraction that cannot write outside its destination.

`zipfile.ZipFile.extractall` sanitises names silently (it drops `..` and leading slashes), so a
hostile archive still lands somewhere the user did not expect. `safe_extract` checks every entry
first and refuses the whole archive, before writing anything, if any entry would leave `dest`.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from tumorcam.errors import TumorcamError
from tumorcam.io import atomic_path

_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why this entry may not be extracted (absolute path, `..`, drive letter, symlink), or None."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/"):
        return "absolute path"
    if _DRIVE.match(name):
        return "drive-letter path"
    if ".." in PurePosixPath(name).parts:
        return "'..' component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def safe_extract(zip_path: str | os.PathLike, dest: str | os.PathLike, progress: bool = False) -> list[Path]:
    """Extract every entry of `zip_path` under `dest`; return the files written (or already there).

    The whole archive is refused with a `TumorcamError` naming the zip and the entry if any entry
    is an absolute path, holds `..`, or is a symbolic link: nothing is written then. Each file is
    written to a temporary name and renamed, so an interrupted extraction leaves no half file; a
    file already present with the entry's size is kept (it can only have been written whole).
    """
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise TumorcamError(f"{zip_path}: not a readable zip file ({exc})") from exc
    with archive:
        infos = archive.infolist()
        for info in infos:
            reason = unsafe_reason(info)
            if reason:
                raise TumorcamError(
                    f"{zip_path}: refusing to extract entry {info.filename!r} ({reason}): it would leave {dest}"
                )
        root = dest.resolve()
        written: list[Path] = []
        for info in tqdm(infos, desc=f"extract {zip_path.name}", unit="file", disable=not progress):
            target = dest / info.filename.replace("\\", "/")
            if not target.resolve().is_relative_to(root):  # e.g. through a symlink already in dest
                raise TumorcamError(f"{zip_path}: entry {info.filename!r} resolves outside {dest}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if not (target.is_file() and target.stat().st_size == info.file_size):
                try:
                    with archive.open(info) as src, atomic_path(target) as tmp, open(tmp, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                    raise TumorcamError(f"{zip_path}: entry {info.filename!r} is corrupt ({exc})") from exc
            written.append(target)
    return written

