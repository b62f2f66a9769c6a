"""``beir:<name>`` download against a real local HTTP server."""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from colbert_core.data import (
    DatasetDownloadError,
    DataSourceError,
    Document,
    Query,
    load_qrels,
    load_queries,
    open_corpus,
    resolve_source,
)


@dataclass
class _Server:
    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[_Server]:
    state = _Server(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Keep pytest output clean; the test inspects state.requests instead.
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/beir"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def data_dir(tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "datasets"
    monkeypatch.setenv("COLBERT_BATCH_DATA", str(root))
    monkeypatch.setenv("COLBERT_BATCH_BEIR_URL", server.url)
    return root


def _zip(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return buf.getvalue()


def _beir_members(prefix: str) -> dict[str, str]:
    return {
        f"{prefix}corpus.jsonl": '{"_id": "d1", "title": "T", "text": "hello"}\n',
        f"{prefix}queries.jsonl": '{"_id": "q1", "text": "hi"}\n{"_id": "q2", "text": "x"}\n',
        f"{prefix}qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t1\n",
    }


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_download_unpacks_once(data_dir: Path, server: _Server) -> None:
    server.files["/beir/mini.zip"] = _zip(_beir_members("mini/"))
    folder = resolve_source("beir:mini")
    assert Path(folder) == data_dir / "mini"
    assert (data_dir / "mini" / "qrels" / "test.tsv").is_file()
    assert server.requests == ["/beir/mini.zip"]
    # Cached: neither a second resolve nor the readers hit the server again.
    assert resolve_source("beir:mini") == folder
    assert list(open_corpus("beir:mini")) == [Document("d1", "hello", "T")]
    assert load_queries("beir:mini") == [Query("q1", "hi")]
    assert len(load_qrels("beir:mini")) == 1
    assert server.requests == ["/beir/mini.zip"]
    # Temp zip and extraction folder are gone.
    assert _leftovers(data_dir) == ["mini"]


def test_zip_without_top_folder(data_dir: Path, server: _Server) -> None:
    server.files["/beir/flat.zip"] = _zip(_beir_members(""))
    folder = Path(resolve_source("beir:flat"))
    assert (folder / "corpus.jsonl").is_file()
    assert _leftovers(data_dir) == ["flat"]


def test_404_raises_and_leaves_nothing(data_dir: Path, server: _Server) -> None:
    with pytest.raises(DatasetDownloadError) as info:
        resolve_source("beir:missing")
    message = str(info.value)
    assert f"{server.url}/missing.zip" in message
    assert "COLBERT_BATCH_BEIR_URL" in message
    assert "404" in message
    assert _leftovers(data_dir) == []


def test_path_traversal_member_is_refused(data_dir: Path, server: _Server, tmp_path: Path) -> None:
    members = _beir_members("evil/")
    members["evil/../../escaped.txt"] = "pwned"
    server.files["/beir/evil.zip"] = _zip(members)
    with pytest.raises(DatasetDownloadError, match="points outside"):
        resolve_source("beir:evil")
    assert _leftovers(data_dir) == []
    assert not (tmp_path / "escaped.txt").exists()


def test_absolute_member_is_refused(data_dir: Path, server: _Server) -> None:
    members = _beir_members("abs/")
    members["/tmp/abs-escape.txt"] = "pwned"
    server.files["/beir/abs.zip"] = _zip(members)
    with pytest.raises(DatasetDownloadError, match="points outside"):
        resolve_source("beir:abs")
    assert _leftovers(data_dir) == []


def test_not_a_zip_and_no_corpus(data_dir: Path, server: _Server) -> None:
    server.files["/beir/junk.zip"] = b"<html>not a zip</html>"
    with pytest.raises(DatasetDownloadError, match="not a valid zip"):
        resolve_source("beir:junk")
    server.files["/beir/empty.zip"] = _zip({"empty/readme.txt": "nothing"})
    with pytest.raises(DatasetDownloadError, match=r"no corpus\.jsonl"):
        resolve_source("beir:empty")
    assert _leftovers(data_dir) == []


def test_unusable_names_and_folders(data_dir: Path, server: _Server) -> None:
    with pytest.raises(DataSourceError, match="invalid BEIR dataset name"):
        resolve_source("beir:../outside")
    (data_dir / "broken").mkdir(parents=True)
    with pytest.raises(DataSourceError, match="delete it"):
        resolve_source("beir:broken")
    assert server.requests == []
