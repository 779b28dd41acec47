"""The downloader and safe extraction, against a local HTTP server on 127.0.0.1 serving small zips."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import socket
import stat
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tumorcam.cli import main
from tumorcam.data.archive import safe_extract
from tumorcam.data.download import FIGSHARE_ZIPS, DownloadWarning, RemoteFile, download
from tumorcam.errors import TumorcamError


class FileServer:
    """What the local server serves (`routes`), what it saw (`seen`: path and Range header),
    and the paths whose next answer stops after half the body (`cut_once`)."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.cut_once: set[str] = set()
        self.seen: list[tuple[str, str | None]] = []
        self.url = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: closing it ends the body

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                byte_range = self.headers.get("Range")
                server.seen.append((self.path, byte_range))
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(re.fullmatch(r"bytes=(\d+)-", byte_range).group(1)) if byte_range else 0
                if start >= len(body) > 0 and byte_range:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206 if byte_range else 200)
                if byte_range:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if self.path in server.cut_once:
                    server.cut_once.discard(self.path)
                    payload = payload[: len(payload) // 2]
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def file_requests(self, file_id: int) -> list[str | None]:
        return [byte_range for path, byte_range in self.seen if path == f"/files/{file_id}"]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    files = FileServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), files.handler())
    files.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield files
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def make_zip(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data, zipfile.ZIP_DEFLATED)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def serve_zip(server: FileServer, name: str, file_id: int, entries: dict[str, bytes]) -> tuple[RemoteFile, bytes]:
    data = make_zip(entries)
    server.routes[f"/files/{file_id}"] = data
    return RemoteFile(name, file_id, md5(data)), data


def test_good_download_verifies_extracts_and_is_cached(server: FileServer, tmp_path: Path) -> None:
    first, first_bytes = serve_zip(server, "part1.zip", 11, {"1.mat": b"slice one" * 500, "2.mat": b"slice two"})
    second, _ = serve_zip(server, "part2.zip", 12, {"3.mat": b"slice three" * 300})
    cvind, readme = b"\x00cvind folds" * 100, b"Cheng's brain tumour dataset\n"
    server.routes["/files/21"], server.routes["/files/22"] = cvind, readme
    server.routes["/v2/articles/1512427/files"] = json.dumps([
        {"id": 21, "name": "cvind.mat", "size": len(cvind), "computed_md5": md5(cvind)},
        {"id": 22, "name": "README.txt", "size": len(readme), "supplied_md5": md5(readme), "computed_md5": ""},
        {"id": 11, "name": "part1.zip", "computed_md5": first.md5},
    ]).encode()
    dest = tmp_path / "figshare"

    paths = download(dest, server.url, files=[first, second], api_url=f"{server.url}/v2", progress=False)

    assert paths == [dest / "part1.zip", dest / "part2.zip", dest / "cvind.mat", dest / "README.txt"]
    assert (dest / "part1.zip").read_bytes() == first_bytes
    assert (dest / "cvind.mat").read_bytes() == cvind and (dest / "README.txt").read_bytes() == readme
    assert (dest / "mat" / "1.mat").read_bytes() == b"slice one" * 500
    assert (dest / "mat" / "3.mat").read_bytes() == b"slice three" * 300
    assert not list(dest.glob("*.part")) and not list(dest.glob("tmp*"))

    # a second run verifies what is there and downloads nothing
    before = len(server.seen)
    assert download(dest, server.url, files=[first, second], extras=(), progress=False) == paths[:2]
    assert len(server.seen) == before


def test_wrong_checksum_fails_and_leaves_nothing_complete(server: FileServer, tmp_path: Path) -> None:
    good, _ = serve_zip(server, "part1.zip", 11, {"1.mat": b"the real bytes"})
    served = make_zip({"1.mat": b"tampered bytes"})
    server.routes["/files/11"] = served
    dest = tmp_path / "figshare"

    with pytest.raises(TumorcamError) as error:
        download(dest, server.url, files=[good], extras=(), progress=False)
    message = str(error.value)
    assert "part1.zip" in message and good.md5 in message and md5(served) in message
    assert sorted(p.name for p in dest.iterdir()) == []  # no final name, no .part, no temporary

    server.routes["/files/11"] = make_zip({"1.mat": b"the real bytes"})  # the server is fixed
    assert download(dest, server.url, files=[good], extras=(), extract=False, progress=False) == [dest / "part1.zip"]
    assert md5((dest / "part1.zip").read_bytes()) == good.md5


def test_interrupted_transfer_resumes_with_a_range_request(server: FileServer, tmp_path: Path) -> None:
    slices = {f"{i}.mat": random.Random(i).randbytes(60_000) for i in range(1, 6)}  # incompressible: ~300 kB
    remote, data = serve_zip(server, "part1.zip", 11, slices)
    server.cut_once.add("/files/11")
    dest = tmp_path / "figshare"

    with pytest.raises(TumorcamError, match="part1.zip.*run again to resume"):
        download(dest, server.url, files=[remote], extras=(), progress=False)
    part = dest / "part1.zip.part"
    kept = part.stat().st_size
    assert 0 < kept <= len(data) // 2  # whole chunks received before the cut
    assert not (dest / "part1.zip").exists()

    download(dest, server.url, files=[remote], extras=(), progress=False)
    assert server.file_requests(11) == [None, f"bytes={kept}-"]
    assert (dest / "part1.zip").read_bytes() == data
    assert not part.exists()
    assert (dest / "mat" / "5.mat").read_bytes() == slices["5.mat"]


def test_a_whole_part_file_is_verified_without_downloading_again(server: FileServer, tmp_path: Path) -> None:
    remote, data = serve_zip(server, "part1.zip", 11, {"1.mat": b"complete before the crash"})
    dest = tmp_path / "figshare"
    dest.mkdir()
    (dest / "part1.zip.part").write_bytes(data)  # a crash between the last byte and the rename

    download(dest, server.url, files=[remote], extras=(), extract=False, progress=False)
    assert server.file_requests(11) == [f"bytes={len(data)}-"]  # answered 416: nothing left to send
    assert (dest / "part1.zip").read_bytes() == data


def test_unreachable_listing_skips_the_extras_with_a_warning(server: FileServer, tmp_path: Path) -> None:
    remote, _ = serve_zip(server, "part1.zip", 11, {"1.mat": b"x"})
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"

    with pytest.warns(DownloadWarning, match="cvind.mat"):
        paths = download(
            tmp_path / "d", server.url, files=[remote], api_url=closed, extract=False, progress=False, timeout=5
        )
    assert paths == [tmp_path / "d" / "part1.zip"]


@pytest.mark.parametrize(
    "bad_name", ["../evil", "/tmp/tumorcam-absolute-evil", "sub/../../evil", "a\\..\\..\\evil", "C:/evil"]
)
def test_safe_extract_refuses_entries_that_leave_dest(tmp_path: Path, bad_name: str) -> None:
    zip_path = tmp_path / "bad.zip"
    zip_path.write_bytes(make_zip({"ok.mat": b"fine", bad_name: b"evil"}))
    dest = tmp_path / "inside" / "dest"

    with pytest.raises(TumorcamError, match=r"bad\.zip.*refusing"):
        safe_extract(zip_path, dest)
    assert not dest.exists()  # not even the good entry
    assert not (tmp_path / "evil").exists() and not (tmp_path / "inside" / "evil").exists()
    assert not Path("/tmp/tumorcam-absolute-evil").exists()


def test_safe_extract_refuses_symlinks(tmp_path: Path) -> None:
    zip_path = tmp_path / "link.zip"
    zip_path.write_bytes(make_zip({"ok.mat": b"fine"}, symlinks={"escape": "../../etc"}))
    with pytest.raises(TumorcamError, match="symbolic link"):
        safe_extract(zip_path, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_safe_extract_names_a_file_that_is_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "not.zip"
    path.write_bytes(b"<html>figshare error page</html>")
    with pytest.raises(TumorcamError, match=r"not\.zip: not a readable zip"):
        safe_extract(path, tmp_path / "dest")


def test_download_refuses_a_verified_zip_with_an_unsafe_entry(server: FileServer, tmp_path: Path) -> None:
    remote, _ = serve_zip(server, "part1.zip", 11, {"1.mat": b"x", "../evil": b"escape"})
    dest = tmp_path / "figshare"
    with pytest.raises(TumorcamError, match=r"'\.\./evil'"):
        download(dest, server.url, files=[remote], extras=(), progress=False)
    assert not (tmp_path / "evil").exists() and not (dest / "mat").exists()


def test_cli_prints_one_error_line_and_exits_2(
    server: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = FIGSHARE_ZIPS[0]  # the real table: the local server serves bytes that do not match it
    server.routes[f"/files/{first.file_id}"] = make_zip({"1.mat": b"not the figshare file"})
    dest = str(tmp_path / "d")
    args = ["data", "download", "--dest", dest, "--base-url", server.url, "--api-url", f"{server.url}/v2"]

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in "".join(lines)
    assert first.name in errors[0] and first.md5 in errors[0]
    assert not (tmp_path / "d" / first.name).exists()

    with pytest.raises(SystemExit) as exit_info:
        main(["data", "download", "--dest", dest, "--base-url", "ftp://example.org"])
    assert exit_info.value.code == 2
    expected = "error: --base-url 'ftp://example.org': expected an http:// or https:// URL"
    assert capsys.readouterr().err.strip() == expected
