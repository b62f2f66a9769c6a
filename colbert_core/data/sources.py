"""Resolve dataset specs (``beir:<name>``, ``irds:<id>``, local paths) to readable sources.

``beir:<name>`` is fetched once from the BEIR download server (or a mirror) into a
local cache folder and then read from there like any BEIR folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from colbert_core.errors import ColbertBatchError

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "COLBERT_BATCH_DATA"
BEIR_URL_ENV = "COLBERT_BATCH_BEIR_URL"
DEFAULT_BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
BEIR_PREFIX = "beir:"
IRDS_PREFIX = "irds:"

_CHUNK_BYTES = 1 << 20
_DOWNLOAD_TIMEOUT_S = 60.0
# BEIR dataset names are plain slugs ("scifact", "trec-covid", "webis-touche2020");
# anything else could escape the cache folder.
_BEIR_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class DatasetDownloadError(ColbertBatchError, RuntimeError):
    """A ``beir:`` dataset could not be downloaded or unpacked."""


class DataSourceError(ColbertBatchError, ValueError):
    """A dataset spec names something that cannot be read (bad name, format or layout)."""


class DatasetNotFoundError(DataSourceError, FileNotFoundError):
    """A dataset path, or a split of a BEIR folder, does not exist."""


def datasets_dir() -> Path:
    """Folder holding downloaded datasets.

    Returns
    -------
    Path
        ``$COLBERT_BATCH_DATA`` if set, else ``~/.cache/colbert-batch/datasets``.
    """
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "colbert-batch" / "datasets"


def is_dataset(spec: str) -> bool:
    """Whether ``spec`` names a whole dataset (``beir:``, ``irds:`` or a BEIR folder)
    rather than a single file."""
    return spec.startswith((BEIR_PREFIX, IRDS_PREFIX)) or Path(spec).expanduser().is_dir()


def default_qrels(queries: str, qrels: str | None) -> str | None:
    """The qrels to evaluate a run with: ``qrels`` when given, else the queries' own
    dataset when the queries come from one (a plain queries file has no judgements).

    >>> default_qrels("beir:scifact", None), default_qrels("q.tsv", None)
    ('beir:scifact', None)
    """
    if qrels:
        return qrels
    return queries if is_dataset(queries) else None


def resolve_source(spec: str) -> str:
    """Turn a dataset spec into something the readers can open.

    Parameters
    ----------
    spec : str
        ``"beir:<name>"`` (downloaded on first use), ``"irds:<id>"`` or a local path.

    Returns
    -------
    str
        For ``beir:`` the local BEIR folder; anything else unchanged.

    Raises
    ------
    DataSourceError
        If the BEIR name is not a plain dataset name, or the cached folder is
        incomplete.
    DatasetDownloadError
        If the download or unpacking fails.
    """
    if not spec.startswith(BEIR_PREFIX):
        return spec
    name = spec[len(BEIR_PREFIX) :]
    if not _BEIR_NAME_RE.match(name):
        raise DataSourceError(
            f"invalid BEIR dataset name {name!r} in {spec!r}; use a plain name such as "
            "'beir:scifact', or pass the path of a local BEIR folder"
        )
    root = datasets_dir()
    target = root / name
    if target.exists():
        if (target / "corpus.jsonl").is_file():
            return str(target)
        raise DataSourceError(
            f"{target} exists but holds no corpus.jsonl; delete it to download {spec} again"
        )
    base = os.environ.get(BEIR_URL_ENV) or DEFAULT_BEIR_URL
    url = f"{base.rstrip('/')}/{name}.zip"
    root.mkdir(parents=True, exist_ok=True)
    _download_beir(url, name, target)
    return str(target)


def _download_beir(url: str, name: str, target: Path) -> None:
    """Download ``url`` (a BEIR zip) and move its dataset folder to ``target``."""
    root = target.parent
    fd, zip_tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".zip.part")
    extract_dir = tempfile.mkdtemp(dir=root, prefix=f".{name}.extract.")
    try:
        with os.fdopen(fd, "wb") as out:
            _fetch(url, out)
        folder = _safe_extract(Path(zip_tmp), Path(extract_dir), url)
        try:
            os.replace(folder, target)
        except OSError as exc:
            # Another process may have finished the same download first; its
            # complete folder is as good as ours.
            if (target / "corpus.jsonl").is_file():
                logger.info("%s was created concurrently; using it", target)
                return
            raise DatasetDownloadError(
                f"could not move the unpacked dataset into {target}: {exc}; check that "
                f"{DATA_DIR_ENV} points to a writable folder"
            ) from exc
        logger.info("dataset %s ready in %s", name, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(zip_tmp)
        shutil.rmtree(extract_dir, ignore_errors=True)


def _fetch(url: str, out: IO[bytes]) -> None:
    """Stream ``url`` into the binary file ``out``, logging progress."""
    logger.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            next_report = 0.1
            while chunk := resp.read(_CHUNK_BYTES):
                out.write(chunk)
                done += len(chunk)
                if total and done / total >= next_report:
                    logger.info(
                        "downloaded %.1f of %.1f MiB (%d%%) from %s",
                        done / 2**20,
                        total / 2**20,
                        100 * done // total,
                        url,
                    )
                    next_report = (10 * done // total + 1) / 10
            if total and done != total:
                raise DatasetDownloadError(
                    f"download of {url} ended after {done} of {total} bytes; retry, or set "
                    f"{BEIR_URL_ENV} to a mirror that serves <name>.zip"
                )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DatasetDownloadError(
            f"could not download {url}: {exc}; set {BEIR_URL_ENV} to a mirror that serves "
            f"<name>.zip, or unpack the dataset yourself into {DATA_DIR_ENV}/<name>"
        ) from exc
    logger.info("downloaded %.1f MiB from %s", done / 2**20, url)


def _safe_extract(zip_path: Path, dest: Path, url: str) -> Path:
    """Unpack ``zip_path`` into ``dest`` and return the folder holding corpus.jsonl.

    Raises
    ------
    DatasetDownloadError
        If the archive is corrupt, has a member that would land outside
        ``dest``, or holds no (or several) ``corpus.jsonl``.
    """
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.infolist():
                _check_member(member.filename, url)
            archive.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise DatasetDownloadError(
            f"{url} is not a valid zip archive ({exc}); check {BEIR_URL_ENV}"
        ) from exc
    candidates = sorted(p.parent for p in dest.rglob("corpus.jsonl") if p.is_file())
    if not candidates:
        raise DatasetDownloadError(f"the archive from {url} holds no corpus.jsonl")
    if len(candidates) > 1:
        found = ", ".join(str(p.relative_to(dest)) for p in candidates)
        raise DatasetDownloadError(
            f"the archive from {url} holds several datasets ({found}); unpack it yourself "
            "and pass the path of the one you want"
        )
    return candidates[0]


def _check_member(filename: str, url: str) -> None:
    """Refuse zip member names that could write outside the extraction folder."""
    # Zip names use "/", but a hostile archive may use "\\" to slip past the check.
    posix = PurePosixPath(filename.replace("\\", "/"))
    drive_like = bool(posix.parts) and ":" in posix.parts[0]
    if posix.is_absolute() or drive_like or ".." in posix.parts:
        raise DatasetDownloadError(
            f"refusing to unpack {url}: member {filename!r} points outside the dataset "
            "folder; the archive is corrupt or malicious"
        )
