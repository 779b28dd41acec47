"""Fetch Cheng's figshare brain tumour dataset (article 1512427): verified, cached, resumable.

pooch decides whether a file is already there and verified (`pooch.retrieve` with the MD5),
downloads into a temporary file and renames it only after the MD5 matched. pooch's own
`HTTPDownloader` always starts from byte 0, so `ResumableDownloader` (a pooch downloader)
keeps the bytes received so far in `NAME.part` and continues them with an HTTP Range request.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pooch
import requests
from tqdm import tqdm

from tumorcam.data.archive import safe_extract
from tumorcam.errors import TumorcamError

FIGSHARE_DOWNLOADS = "https://ndownloader.figshare.com"
FIGSHARE_API = "https://api.figshare.com/v2"
ARTICLE_ID = 1512427
ARTICLE_EXTRAS = ("cvind.mat", "README.txt")
EXTRACT_DIR = "mat"
_CHUNK = 1 << 16  # bytes kept per write: an interruption loses less than one chunk


class RemoteFile(NamedTuple):
    """One figshare file: saved as `name`, fetched from `BASE/files/<file_id>`, verified by `md5`."""

    name: str
    file_id: int
    md5: str


FIGSHARE_ZIPS: tuple[RemoteFile, ...] = (
    RemoteFile("brainTumorDataPublic_1-766.zip", 3381290, "74b949ad33f042e6e103523091cd1428"),
    RemoteFile("brainTumorDataPublic_767-1532.zip", 3381296, "7e8a875500d2c8a346f270538e29890e"),
    RemoteFile("brainTumorDataPublic_1533-2298.zip", 3381293, "8227bf6080cb71f15a88be8d25c79ae7"),
    RemoteFile("brainTumorDataPublic_2299-3064.zip", 3381302, "b378a80d6174e5317d59eb28430c6652"),
)


class DownloadWarning(UserWarning):
    """Something optional (the article's `cvind.mat` / `README.txt`) was skipped."""


def download(
    dest: str | os.PathLike,
    base_url: str | None = None,
    *,
    files: Sequence[RemoteFile] = FIGSHARE_ZIPS,
    extras: Sequence[str] = ARTICLE_EXTRAS,
    api_url: str = FIGSHARE_API,
    extract: bool = True,
    progress: bool = True,
    timeout: float = 60.0,
) -> list[Path]:
    """Download `files` (default: the four figshare zips) and the article's `extras` into `dest`.

    `base_url` replaces `https://ndownloader.figshare.com`. The MD5 of `extras` comes from the
    figshare file listing `{api_url}/articles/1512427/files`; when that listing cannot be read,
    or lacks a file, the file is skipped with a `DownloadWarning`. With `extract`, the zips are
    unpacked (safely) into `dest/mat/`. Returns the downloaded files, zips first.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise TumorcamError(f"dest {dest}: exists and is not a folder", param="dest")
    base, api = _check_url(base_url or FIGSHARE_DOWNLOADS, "base_url"), _check_url(api_url, "api_url")
    zips = [fetch(remote, dest, base, progress=progress, timeout=timeout) for remote in files]
    listed = article_extras(api, extras, timeout=timeout) if extras else []
    extra_files = [fetch(remote, dest, base, progress=progress, timeout=timeout) for remote in listed]
    if extract:
        for path in zips:
            safe_extract(path, dest / EXTRACT_DIR, progress=progress)
    return zips + extra_files


def fetch(remote: RemoteFile, dest: Path, base_url: str, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """`dest/remote.name`, downloaded (or resumed) and MD5-verified unless already there and verified."""
    downloader = ResumableDownloader(dest / f"{remote.name}.part", remote.md5, progress=progress, timeout=timeout)
    url = f"{base_url}/files/{remote.file_id}"
    path = pooch.retrieve(url, known_hash=f"md5:{remote.md5}", fname=remote.name, path=dest, downloader=downloader)
    return Path(path)


def article_extras(api_url: str, names: Sequence[str], *, timeout: float = 60.0) -> list[RemoteFile]:
    """The files called `names` in the figshare listing of the article, with their MD5.

    A listing that cannot be fetched or read, or a name missing from it or without an MD5, gives
    a `DownloadWarning` and is left out: these files are optional, the four zips are not.
    """
    url = f"{api_url}/articles/{ARTICLE_ID}/files"
    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
        listing = response.json()
        by_name = {str(entry["name"]): entry for entry in listing}
    except (requests.RequestException, ValueError, TypeError, KeyError) as exc:
        message = f"skipping {', '.join(names)}: cannot read the figshare file listing {url} ({exc})"
        warnings.warn(message, DownloadWarning, stacklevel=2)
        return []
    found = []
    for name in names:
        entry = by_name.get(name)
        md5 = entry and (entry.get("computed_md5") or entry.get("supplied_md5"))
        if not entry or not md5 or "id" not in entry:
            message = f"skipping {name}: the figshare listing {url} gives no file id and MD5 for it"
            warnings.warn(message, DownloadWarning, stacklevel=2)
            continue
        found.append(RemoteFile(name, int(entry["id"]), str(md5)))
    return found


class ResumableDownloader:
    """A pooch downloader that resumes from `part` (bytes kept from an earlier try) with HTTP Range.

    Bytes are appended to `part` as they arrive, so an interrupted transfer keeps them. When the
    transfer is complete the MD5 of the whole `part` is checked here:
    a mismatch deletes `part` and raises a `TumorcamError` with expected and actual MD5; a match
    moves `part` onto pooch's temporary file, which pooch verifies again and renames to its name.
    """

    def __init__(self, part: Path, md5: str, *, progress: bool = True, timeout: float = 60.0) -> None:
        self.part = part
        self.md5 = md5.lower()
        self.progress = progress
        self.timeout = timeout

    def __call__(self, url: str, output_file: str, pooch_: object) -> None:
        name = self.part.name.removesuffix(".part")
        offset = self.part.stat().st_size if self.part.is_file() else 0
        headers = {"Accept-Encoding": "identity"}  # byte ranges of the file itself, not of a gzip stream
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
                if response.status_code == 416 and offset:  # nothing left to send: `part` is whole
                    total = offset
                else:
                    response.raise_for_status()
                    offset = self._start_offset(response, offset, name, url)
                    length = response.headers.get("Content-Length")
                    total = offset + int(length) if length is not None else None
                    self._append(response, offset, total, name)
        except requests.RequestException as exc:
            kept = self.part.stat().st_size if self.part.is_file() else 0
            advice = "run again to retry"
            if kept:
                advice = f"the partial file {self.part} ({kept} bytes) is kept: run again to resume"
            raise TumorcamError(f"download of {name} from {url} failed ({exc}); {advice}") from exc
        received = self.part.stat().st_size
        if total is not None and received != total:
            raise TumorcamError(
                f"download of {name} from {url} stopped at {received} of {total} bytes; "
                f"the partial file {self.part} is kept: run again to resume"
            )
        actual = _md5(self.part)
        if actual != self.md5:
            self.part.unlink()
            raise TumorcamError(
                f"MD5 mismatch for {name} from {url}: expected {self.md5}, got {actual}; "
                "the download was deleted, run again to fetch it afresh"
            )
        os.replace(self.part, output_file)

    def _start_offset(self, response: requests.Response, offset: int, name: str, url: str) -> int:
        """Where the response body starts: `offset` for a 206 answer, 0 when the server ignored Range."""
        if response.status_code != 206:
            self.part.unlink(missing_ok=True)
            return 0
        match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            self.part.unlink(missing_ok=True)
            raise TumorcamError(
                f"download of {name} from {url}: the server resumed at {response.headers.get('Content-Range')!r}, "
                f"not at byte {offset}; the partial file was deleted, run again to start afresh"
            )
        return offset

    def _append(self, response: requests.Response, offset: int, total: int | None, name: str) -> None:
        self.part.parent.mkdir(parents=True, exist_ok=True)
        with open(self.part, "ab") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=f"download {name}", disable=not self.progress
        ) as bar:
            for chunk in response.iter_content(chunk_size=_CHUNK):
                out.write(chunk)
                out.flush()
                bar.update(len(chunk))


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _check_url(url: str, param: str) -> str:
    if not re.match(r"^https?://[^/]+", url):
        raise TumorcamError(f"{param} {url!r}: expected an http:// or https:// URL", param=param)
    return url.rstrip("/")
