"""Downloads against a local http.server on 127.0.0.1 serving files the test generates (never the internet)."""
import functools
import hashlib
import http.server
import io
import pickle
import socket
import tarfile
import threading
import time

import numpy as np
import pytest

from gpunet.data import ChecksumError, DataUnavailableError, download, load_dataset
from gpunet.data.idx import write_idx

from test_data import make_idx_dir


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(root folder served, base URL). Files put under root/<dataset>/ are downloadable."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("GPUNET_DATA_URL", raising=False)
    return tmp_path / "cache"


def _pin(monkeypatch, dataset, folder):
    """Point SOURCES[dataset] at the SHA-256 of the files the test generated in `folder`."""
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    monkeypatch.setitem(download.SOURCES, dataset, download.Source(("http://127.0.0.1:9/unused/",), files))
    return files


def _leftovers(folder):
    return [p.name for p in folder.rglob("*") if p.name.startswith(".")] if folder.exists() else []


def test_mnist_downloads_verifies_and_caches(server, cache, monkeypatch):
    root, url = server
    raw = make_idx_dir(root / "mnist")
    _pin(monkeypatch, "mnist", root / "mnist")
    monkeypatch.setenv("GPUNET_DATA_URL", url)
    ds = load_dataset("mnist", quiet=True)
    assert ds.x_train.shape == (60, 1, 6, 5)
    np.testing.assert_array_equal(ds.y_train, raw["train-labels-idx1-ubyte"])
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(p.name for p in (root / "mnist").iterdir())
    assert _leftovers(cache) == []
    for p in (root / "mnist").iterdir():  # the cache is used from now on: the server may vanish
        p.unlink()
    assert load_dataset("mnist", quiet=True).x_test.shape == (20, 1, 6, 5)


def test_only_missing_files_are_downloaded_base_url_argument(server, cache, monkeypatch, tmp_path):
    root, url = server
    make_idx_dir(root / "files")
    _pin(monkeypatch, "fashion-mnist", root / "files")
    local = tmp_path / "local"
    make_idx_dir(local)
    for p in list(local.iterdir())[:2]:
        p.unlink()
    ds = load_dataset("fashion-mnist", local, base_url=f"{url}/files/", quiet=True)
    assert ds.x_train.shape[0] == 60
    assert len(list((cache / "fashion-mnist").iterdir())) == 2


def test_checksum_mismatch_leaves_nothing(server, cache, monkeypatch):
    root, url = server
    make_idx_dir(root / "mnist")
    files = _pin(monkeypatch, "mnist", root / "mnist")
    name = "t10k-labels-idx1-ubyte.gz"
    write_idx(root / "mnist" / name, np.ones(20, np.uint8))  # served bytes no longer match the pin
    monkeypatch.setenv("GPUNET_DATA_URL", url)
    with pytest.raises(DataUnavailableError) as e:
        load_dataset("mnist", quiet=True)
    msg = str(e.value)
    assert name in msg and "SHA-256" in msg and files[name] in msg
    assert not (cache / "mnist" / name).exists() and _leftovers(cache) == []


def test_download_file_is_atomic_on_checksum_error(server, tmp_path):
    root, url = server
    (root / "f.bin").write_bytes(b"hello")
    with pytest.raises(ChecksumError, match="f.bin"):
        download.download_file(f"{url}/f.bin", tmp_path / "out" / "f.bin", "0" * 64, quiet=True)
    assert list((tmp_path / "out").iterdir()) == []
    good = hashlib.sha256(b"hello").hexdigest()
    assert download.download_file(f"{url}/f.bin", tmp_path / "out" / "f.bin", good, quiet=True).read_bytes() == b"hello"


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_offline_error_names_files_and_where_to_put_them(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("GPUNET_DATA_URL", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(DataUnavailableError) as e:
        load_dataset("mnist", tmp_path / "mine", quiet=True)
    msg = str(e.value)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        assert name in msg
    assert str(cache / "mnist") in msg and str(tmp_path / "mine") in msg and "--data-dir" in msg
    assert _leftovers(cache) == []


def test_http_404_is_reported(server, cache, monkeypatch):
    _, url = server
    monkeypatch.setenv("GPUNET_DATA_URL", url)
    with pytest.raises(DataUnavailableError, match="404"):
        load_dataset("mnist", quiet=True)


def test_cifar_tarball_download_and_extract(server, cache, monkeypatch):
    root, url = server
    (root / "cifar10").mkdir()
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
            blob = pickle.dumps({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 9]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    (root / "cifar10" / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    _pin(monkeypatch, "cifar10", root / "cifar10")
    monkeypatch.setenv("GPUNET_DATA_URL", url)
    ds = load_dataset("cifar10", quiet=True)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.y_test.tolist() == [0, 1, 2, 9]
    assert (cache / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()


def test_real_sources_are_pinned_sha256():
    for dataset, src in download.SOURCES.items():
        assert src.mirrors and src.files
        for name, digest in src.files.items():
            assert len(digest) == 64 and int(digest, 16) >= 0, (dataset, name)


def test_cifar_damaged_extraction_is_detected_and_extracted_again(tmp_path, cache, monkeypatch, capsys):
    """A partial test_batch in the cache (a killed copy, a disk error) is never trusted: its size differs from
    the archive's record, so the batches are extracted again from the tarball, or the error says which file."""
    from test_cli_reliability import _cifar_tarball
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "cifar-10-python.tar.gz").write_bytes(_cifar_tarball())
    first = load_dataset("cifar10", tmp_path / "d", download_missing=False, quiet=True)
    batch = cache / "cifar10" / "cifar-10-batches-py" / "test_batch"
    whole = batch.read_bytes()
    batch.write_bytes(whole[:len(whole) // 2])
    again = load_dataset("cifar10", tmp_path / "d", download_missing=False)
    assert "test_batch" in capsys.readouterr().err and batch.read_bytes() == whole
    np.testing.assert_array_equal(first.x_test, again.x_test)
    assert _leftovers(cache / "cifar10" / "cifar-10-batches-py") == [".sizes.json"]
    assert [p.name for p in (cache / "cifar10").iterdir()] == ["cifar-10-batches-py"]
    batch.write_bytes(whole[:100])
    (tmp_path / "d" / "cifar-10-python.tar.gz").unlink()
    with pytest.raises(DataUnavailableError, match="no intact cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path / "d", download_missing=False, quiet=True)


def test_cifar_extraction_killed_midway_leaves_no_folder(tmp_path, cache, monkeypatch):
    """Extraction happens in a temporary folder: an exception mid-way leaves neither batches nor temporaries."""
    import tarfile as tarfile_mod
    from test_cli_reliability import _cifar_tarball
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "cifar-10-python.tar.gz").write_bytes(_cifar_tarball())
    real = tarfile_mod.TarFile.extractall

    def dies(self, path, members=None, **kw):
        real(self, path, members[:3], **kw)
        raise KeyboardInterrupt
    monkeypatch.setattr(tarfile_mod.TarFile, "extractall", dies)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("cifar10", tmp_path / "d", download_missing=False, quiet=True)
    assert list((cache / "cifar10").iterdir()) == []


# --- stalls, trickles, progress, leftovers, SIGTERM ---------------------------------------------------------

@pytest.fixture
def trickle(tmp_path):
    """A server sending a 1 MB file 1 KB at a time, every 50 ms (51 s in all: longer than any test waits)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            try:
                for _ in range(1 << 10):
                    self.wfile.write(b"x" * 1024)
                    self.wfile.flush()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("rule, message", [
    (dict(PROGRESS_WINDOW_S=0.5, MIN_RATE=100_000.0), r"bytes/s over the last .* below the minimum of 100000 bytes/s"),
    (dict(MIN_RATE=0.0, DEADLINE_S=0.5), r"not complete after 0.5 s")])
def test_a_trickling_mirror_is_given_up_on(trickle, tmp_path, monkeypatch, rule, message):
    """1 KB every 50 ms never trips the per-read timeout; the minimum-progress rule, or else the deadline
    per file, stops it, leaving nothing behind."""
    for name, value in rule.items():
        monkeypatch.setattr(download, name, value)
    t = time.monotonic()
    with pytest.raises(TimeoutError, match=message):
        download.download_file(f"{trickle}/f.bin", tmp_path / "out" / "f.bin", "0" * 64, quiet=True)
    assert time.monotonic() - t < 5 and list((tmp_path / "out").iterdir()) == []


def test_download_shows_bytes_and_rate_and_removes_dead_part_files(server, tmp_path, monkeypatch):
    import subprocess
    import sys
    root, url = server
    (root / "f.bin").write_bytes(b"x" * 300_000)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftovers = [out / f".f.bin.{dead.pid}.0badf00d.part", out / ".f.bin.k3j4h5ab.part"]
    for p in leftovers:
        p.write_bytes(b"x" * 1000)

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, "stderr", Terminal())
    download.download_file(f"{url}/f.bin", out / "f.bin", hashlib.sha256(b"x" * 300_000).hexdigest())
    shown = sys.stderr.getvalue()
    assert "f.bin" in shown and "293k" in shown.replace("K", "k") and "B/s" in shown  # tqdm: size and rate
    assert "0.3 MB in" in shown and "MB/s" in shown                                   # the summary line
    assert sorted(p.name for p in out.iterdir()) == ["f.bin"]


def test_sigterm_during_a_download_cleans_up_and_exits_143(trickle, tmp_path):
    """SIGTERM is handled like Ctrl-C: a one-line message, the .part file removed, exit status 143."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path
    url = trickle
    env = {**os.environ, "GPUNET_DATA": str(tmp_path / "cache"), "GPUNET_DATA_URL": url}
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "gpunet.cli.main", "train", "--dataset", "mnist", "--out",
                             str(tmp_path / "r")], cwd=repo, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not list((tmp_path / "cache" / "mnist").glob(".*.part")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list((tmp_path / "cache" / "mnist").glob(".*.part")), "the download never started"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "gpunet train: terminated (SIGTERM)"
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []


def test_a_corrupt_cached_download_is_fetched_again(server, cache, monkeypatch, capsys):
    """A cached file that no longer has its pinned SHA-256 (truncated by a full disk, altered) and no longer
    reads is downloaded again, with a line saying so; without a mirror the error names the file."""
    root, url = server
    make_idx_dir(root / "mnist")
    _pin(monkeypatch, "mnist", root / "mnist")
    monkeypatch.setenv("GPUNET_DATA_URL", url)
    first = load_dataset("mnist", quiet=True)
    cached = cache / "mnist" / "t10k-images-idx3-ubyte.gz"
    whole = cached.read_bytes()
    cached.write_bytes(whole[:len(whole) // 2])
    again = load_dataset("mnist")
    assert f"{cached} is damaged" in capsys.readouterr().err and cached.read_bytes() == whole
    np.testing.assert_array_equal(first.x_test, again.x_test)
    cached.write_bytes(whole[:len(whole) // 2])
    monkeypatch.setenv("GPUNET_DATA_URL", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(DataUnavailableError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", quiet=True)


def test_a_corrupt_cached_cifar_tarball_is_fetched_again(server, cache, monkeypatch):
    from test_cli_reliability import _cifar_tarball
    root, url = server
    (root / "cifar10").mkdir()
    (root / "cifar10" / "cifar-10-python.tar.gz").write_bytes(_cifar_tarball())
    _pin(monkeypatch, "cifar10", root / "cifar10")
    monkeypatch.setenv("GPUNET_DATA_URL", url)
    (cache / "cifar10").mkdir(parents=True)
    (cache / "cifar10" / "cifar-10-python.tar.gz").write_bytes(_cifar_tarball()[:-500])  # a killed copy
    assert load_dataset("cifar10", quiet=True).x_test.shape == (4, 3, 32, 32)
