"""data.download: resolution order, and downloads from a local HTTP server on 127.0.0.1.

The server answers every way a real download can go: the right bytes, the wrong
bytes (checksum mismatch), a server error, and a connection cut halfway. After a
failure the cache must hold nothing: no partial file, no temporary file, no folder.
"""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from data import DataNotFoundError, DownloadError, download, find_file, load_task
from data.download import SOURCES, Source

PAYLOAD = b"1 a fine sentence\n0 a poor one\n" * 200
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """GET /<mode>/<anything>: ok, wrong, error or cut; /real/<repo>/<commit>/<path> serves real files."""

    requests: list[str] = []
    real_dir: Path | None = None

    def do_GET(self):
        Handler.requests.append(self.path)
        mode = self.path.split("/")[1]
        if mode == "error":
            self.send_error(500, "Internal Server Error")
            return
        body = PAYLOAD
        if mode == "wrong":
            body = PAYLOAD.replace(b"fine", b"FINE")
        if mode == "real":
            relpath = next(local for local, source in SOURCES.items()
                           if self.path.endswith(f"/{source.repo}/{source.commit}/{source.path}"))
            body = (Handler.real_dir / relpath).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "cut":  # promise the whole body, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("PROMPT_CACHE_DIR", str(folder))
    monkeypatch.delenv("PROMPT_OFFLINE", raising=False)
    monkeypatch.delenv("PROMPT_DATA_DIR", raising=False)
    Handler.requests = []
    return folder


def leftovers(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


def test_download_writes_the_verified_file(server, cache):
    dest = cache / "some/dir/file.txt"
    assert download(f"{server}/ok/file.txt", dest, PAYLOAD_SHA) == dest
    assert dest.read_bytes() == PAYLOAD
    assert [p.name for p in leftovers(cache)] == ["some", "dir", "file.txt"], "no temporary file stays behind"


def test_unpinned_file_is_saved_with_a_warning(server, cache):
    with pytest.warns(UserWarning, match=f"no pinned checksum; it was saved unverified \\(sha256 {PAYLOAD_SHA}\\)"):
        download(f"{server}/ok/file.txt", cache / "file.txt", None)
    assert (cache / "file.txt").read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing(server, cache):
    with pytest.raises(DownloadError, match=r"sha256 is [0-9a-f]{64}, expected " + PAYLOAD_SHA):
        download(f"{server}/wrong/file.txt", cache / "sub/file.txt", PAYLOAD_SHA)
    assert leftovers(cache) == []


def test_server_error_leaves_nothing(server, cache):
    with pytest.raises(DownloadError, match="HTTP Error 500"):
        download(f"{server}/error/file.txt", cache / "sub/file.txt", PAYLOAD_SHA)
    assert leftovers(cache) == []


@pytest.mark.parametrize("sha256", [PAYLOAD_SHA, None])
def test_interrupted_transfer_leaves_nothing(server, cache, sha256):
    # without a pinned checksum the length check alone must catch the cut
    with pytest.raises(DownloadError, match=rf"connection closed after {len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes"):
        download(f"{server}/cut/file.txt", cache / "sub/file.txt", sha256)
    assert leftovers(cache) == []


def test_failure_keeps_what_the_cache_already_had(server, cache):
    (cache / "sub").mkdir(parents=True)
    (cache / "sub/other.txt").write_text("keep me")
    with pytest.raises(DownloadError):
        download(f"{server}/wrong/file.txt", cache / "sub/file.txt", PAYLOAD_SHA)
    assert leftovers(cache) == [cache / "sub", cache / "sub/other.txt"]


@pytest.fixture
def fake_source(monkeypatch):
    monkeypatch.setitem(SOURCES, "fake/file.txt", Source("someone/repo", "0" * 40, "data/file.txt", PAYLOAD_SHA))


def test_find_file_downloads_into_the_cache_once(server, cache, fake_source):
    path = find_file("fake/file.txt", base_url=f"{server}/ok")
    assert path == cache / "fake/file.txt" and path.read_bytes() == PAYLOAD
    assert Handler.requests == [f"/ok/someone/repo/{'0' * 40}/data/file.txt"]
    assert find_file("fake/file.txt", base_url=f"{server}/ok") == path
    assert len(Handler.requests) == 1, "the second call is served from the cache"


def test_find_file_failure_lists_places_and_url(server, cache, fake_source, tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        find_file("fake/file.txt", tmp_path / "mine", base_url=f"{server}/wrong")
    message = str(error.value)
    assert f"data_dir argument: {tmp_path / 'mine' / 'fake/file.txt'} (no such file)" in message
    assert "PROMPT_DATA_DIR: not set" in message and f"cache: {cache / 'fake/file.txt'} (no such file)" in message
    assert f"download: {server}/wrong/someone/repo/{'0' * 40}/data/file.txt: sha256 is" in message
    assert "To fix: point PROMPT_DATA_DIR" in message
    assert leftovers(cache) == []


def test_offline_never_touches_the_network(server, cache, fake_source, monkeypatch):
    monkeypatch.setenv("PROMPT_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match=r"download: skipped \(offline"):
        find_file("fake/file.txt", base_url=f"{server}/ok")
    assert Handler.requests == [] and leftovers(cache) == []


def test_resolution_order(tmp_path, cache, monkeypatch, fake_source):
    places = {name: tmp_path / name for name in ("argument", "env")}
    for folder in [*places.values(), cache]:
        (folder / "fake").mkdir(parents=True)
        (folder / "fake/file.txt").write_text(folder.name)
    monkeypatch.setenv("PROMPT_DATA_DIR", str(places["env"]))
    assert find_file("fake/file.txt", places["argument"]).read_text() == "argument"
    assert find_file("fake/file.txt").read_text() == "env"
    monkeypatch.delenv("PROMPT_DATA_DIR")
    assert find_file("fake/file.txt").read_text() == "cache"


def test_cache_dir_follows_xdg(tmp_path, monkeypatch):
    from data import cache_dir
    monkeypatch.delenv("PROMPT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "prompt-learning"


def test_load_task_downloads_real_files_and_checks_them(server, cache, data_dir, monkeypatch):
    """The whole path: load_task -> find_file -> download with the sha256 of SOURCES.md -> read."""
    Handler.real_dir = data_dir
    monkeypatch.setenv("PROMPT_DOWNLOAD_URL", f"{server}/real")
    task = load_task("cb")
    assert (len(task.split("train")), len(task.split("dev"))) == (250, 56)
    assert task.source == str(cache)
    assert sorted(p.relative_to(cache).as_posix() for p in leftovers(cache)) == \
        ["superglue_cb", "superglue_cb/train.jsonl", "superglue_cb/val.jsonl"]
    Handler.requests = []
    assert len(load_task("cb").split("dev")) == 56 and Handler.requests == [], "now read from the cache"


def test_every_pinned_checksum_matches_the_shared_copy(data_dir):
    for relpath, source in SOURCES.items():
        path = data_dir / relpath
        if source.sha256 and path.exists():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == source.sha256, relpath
