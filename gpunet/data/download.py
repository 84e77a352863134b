"""Fetching dataset files: pinned SHA-256, atomic writes, a clear message when offline.

Files land in `data_home()/<dataset>/`: `$GPUNET_DATA` when set, else `~/.cache/gpunet`. Each download
streams into a temporary `.part` file in the destination folder, is hashed on the way, and is renamed
into place (gpunet.atomic) only when the hash matches: an interrupted or corrupt download never leaves a
file that looks complete, and the `.part` files of killed downloads are removed by the next one. A
mirror that stalls (TIMEOUT_S per read), trickles (below MIN_RATE over PROGRESS_WINDOW_S) or outlasts
DEADLINE_S per file is given up on. On a terminal a tqdm bar shows bytes and rate. Mirrors are tried
in order; `$GPUNET_DATA_URL` (a root holding one folder per dataset, `<root>/<dataset>/<file>`) or the
`base_url` argument replaces them, e.g. for a local mirror or a test server.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gpunet.atomic import atomic_write, remove_stale


class DataUnavailableError(FileNotFoundError):
    """A dataset's files are neither on disk nor downloadable; the message says what to put where."""


class ChecksumError(ValueError):
    """A downloaded file does not have its pinned SHA-256."""


@dataclass(frozen=True)
class Source:
    """Where a dataset's files are published and what their bytes hash to."""
    mirrors: tuple[str, ...]
    files: dict  # file name -> sha256 hex digest


SOURCES: dict[str, Source] = {
    "mnist": Source(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        {"train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
         "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
         "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
         "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"}),
    "fashion-mnist": Source(
        ("https://fashion-mnist.s3.eu-central-1.amazonaws.com/",
         "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
        {"train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
         "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
         "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
         "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"}),
    "cifar10": Source(
        ("https://www.cs.toronto.edu/~kriz/",),
        {"cifar-10-python.tar.gz": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"}),
}

TIMEOUT_S = 30.0           # one socket read
DEADLINE_S = 1800.0        # one whole file
MIN_RATE = 20_000.0        # bytes/s, measured over each PROGRESS_WINDOW_S: a trickling mirror is given up on
PROGRESS_WINDOW_S = 30.0


def data_home() -> Path:
    """Root of the download cache: $GPUNET_DATA, else ~/.cache/gpunet."""
    env = os.environ.get("GPUNET_DATA", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gpunet"


def mirrors(dataset: str, base_url: str | None = None) -> list[str]:
    """Folder URLs (ending in '/') to try for `dataset`, in order."""
    if base_url:
        return [base_url.rstrip("/") + "/"]
    root = os.environ.get("GPUNET_DATA_URL", "").strip()
    if root:
        return [f"{root.rstrip('/')}/{dataset}/"]
    return list(SOURCES[dataset].mirrors)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress_bar(total: int | None, name: str, quiet: bool):
    """A tqdm bar (bytes, rate) on a terminal's stderr; nothing when quiet, piped, or without tqdm."""
    if quiet or not getattr(sys.stderr, "isatty", lambda: False)():
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False)


def download_file(url: str, dest, sha256: str, quiet: bool = False) -> Path:
    """Download `url` to `dest` atomically, verifying its SHA-256. Raises OSError (TimeoutError when the
    transfer stalls below MIN_RATE or outlasts DEADLINE_S) or ChecksumError. Removes the `.part` files that
    killed earlier downloads of `dest` left behind."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dest, ".part")
    if not quiet:
        print(f"gpunet: downloading {url} -> {dest}", file=sys.stderr, flush=True)
    h, size = hashlib.sha256(), 0
    start = time.monotonic()
    with atomic_write(dest, ".part") as tmp, open(tmp, "wb") as out, \
            urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
        length = resp.headers.get("Content-Length")
        bar = _progress_bar(int(length) if length and length.isdigit() else None, dest.name, quiet)
        try:
            window_start, window_bytes = start, 0
            while chunk := resp.read1(1 << 16):  # returns what has arrived: the clock is checked often
                h.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
                size += len(chunk)
                window_bytes += len(chunk)
                now = time.monotonic()
                if now - start > DEADLINE_S:
                    raise TimeoutError(f"{url}: not complete after {DEADLINE_S:g} s ({size} bytes so far); gave up")
                if now - window_start >= PROGRESS_WINDOW_S:
                    rate = window_bytes / (now - window_start)
                    if rate < MIN_RATE:
                        raise TimeoutError(f"{url}: {rate:.0f} bytes/s over the last {now - window_start:.0f} s, "
                                           f"below the minimum of {MIN_RATE:g} bytes/s; gave up")
                    window_start, window_bytes = now, 0
        finally:
            bar.close()
        if h.hexdigest() != sha256.lower():
            raise ChecksumError(f"{url}: SHA-256 is {h.hexdigest()}, expected {sha256} (corrupt or altered download; "
                                f"nothing was written to {dest})")
    if not quiet:
        seconds = max(time.monotonic() - start, 1e-9)
        print(f"gpunet: {dest.name}: {size / 1e6:.1f} MB in {seconds:.1f} s ({size / 1e6 / seconds:.2f} MB/s)",
              file=sys.stderr, flush=True)
    return dest


def fetch(dataset: str, names, dest_dir=None, base_url: str | None = None, quiet: bool = False) -> dict:
    """Download the files `names` of `dataset` into `dest_dir` (default data_home()/dataset), skipping
    ones already there. Returns {name: path}. Raises DataUnavailableError naming the files and folders."""
    source = SOURCES[dataset]
    dest_dir = Path(dest_dir) if dest_dir is not None else data_home() / dataset
    paths, failures = {}, []
    for name in names:
        dest = dest_dir / name
        if dest.is_file():
            paths[name] = dest
            continue
        for folder in mirrors(dataset, base_url):
            try:
                paths[name] = download_file(folder + name, dest, source.files[name], quiet=quiet)
                break
            except (OSError, urllib.error.URLError, ChecksumError, ValueError) as e:
                failures.append(f"{folder + name}: {e}")
    missing = [n for n in names if n not in paths]
    if missing:
        raise DataUnavailableError(
            f"{dataset}: could not download {', '.join(missing)} (offline?).\n"
            + "".join(f"  - {f}\n" for f in failures)
            + f"Put these files (from {mirrors(dataset, base_url)[0]}) into {dest_dir} "
              f"(or any folder passed as --data-dir), or set GPUNET_DATA_URL to a mirror.")
    return paths


def refetch_if_corrupt(dataset: str, path, base_url: str | None = None, quiet: bool = False) -> bool:
    """When `path` is a file of the download cache that no longer has its pinned SHA-256 (a copy cut short,
    a disk error), delete it and download it again; True when it did. Files elsewhere (a --data-dir) are
    the user's and never touched. Raises DataUnavailableError when the new download fails."""
    path = Path(path)
    pinned = SOURCES[dataset].files.get(path.name) if dataset in SOURCES else None
    if pinned is None or path.parent.resolve() != (data_home() / dataset).resolve() or not path.is_file():
        return False
    digest = sha256_file(path)
    if digest == pinned.lower():
        return False
    if not quiet:
        print(f"gpunet: {path} is damaged (SHA-256 {digest[:12]}..., expected {pinned[:12]}...); downloading it "
              f"again", file=sys.stderr, flush=True)
    path.unlink()
    fetch(dataset, [path.name], base_url=base_url, quiet=quiet)
    return True
