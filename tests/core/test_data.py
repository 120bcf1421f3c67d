"""Datasets: IDX parsing, resize, and Fashion-MNIST's download path against a loopback server."""

from __future__ import annotations

import gzip
import hashlib
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from resnet_multi.training import data
from resnet_multi.training.data import DataError, batches, download, fashion_mnist, read_idx, resize


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


class Server:
    """Loopback-only HTTP server with Range support and switchable faults."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.truncate_next = False
        self.ranges: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                body = outer.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if "Range" in self.headers:
                    outer.ranges.append(self.headers["Range"])
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if outer.truncate_next:  # promise everything, deliver half, hang up
                    outer.truncate_next = False
                    payload = payload[: len(payload) // 2]
                self.wfile.write(payload)
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def tiny_fashion(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_MULTI_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 6),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (4, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 4),
    }
    blobs = {name: idx_bytes(a) for name, a in arrays.items()}
    digests = {name: hashlib.sha256(b).hexdigest() for name, b in blobs.items()}
    return arrays, blobs, digests


def test_download_verify_and_load(tiny_fashion):
    arrays, blobs, digests = tiny_fashion
    with Server(blobs) as server:
        ds = fashion_mnist(resize_to=32, url=server.url, files=digests)
    assert ds.train_x.shape == (6, 1, 32, 32) and ds.val_x.shape == (4, 1, 32, 32)
    np.testing.assert_array_equal(ds.train_y, arrays["train-labels-idx1-ubyte.gz"])
    assert ds.train_x.dtype == np.float32 and 0 <= ds.train_x.min() and ds.train_x.max() <= 1
    cached = data.default_cache() / "fashion-mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(blobs)  # no .partial left


def test_checksum_mismatch_discards_the_file(tiny_fashion, tmp_path):
    _, blobs, digests = tiny_fashion
    name = "train-labels-idx1-ubyte.gz"
    tampered = bytearray(blobs[name])
    tampered[len(tampered) // 2] ^= 0xFF
    with Server({name: bytes(tampered)}) as server:
        dest = tmp_path / "x" / name
        with pytest.raises(DataError, match="does not match"):
            download(server.url + name, dest, digests[name])
    assert not dest.exists() and not dest.with_name(name + ".partial").exists()


def test_truncated_transfer_is_kept_apart_then_resumed(tiny_fashion, tmp_path):
    _, blobs, digests = tiny_fashion
    name = "train-images-idx3-ubyte.gz"
    dest = tmp_path / "dl" / name
    with Server(blobs) as server:
        server.truncate_next = True
        with pytest.raises(DataError, match="resume"):
            download(server.url + name, dest, digests[name])
        partial = dest.with_name(name + ".partial")
        assert not dest.exists() and 0 < partial.stat().st_size < len(blobs[name])
        download(server.url + name, dest, digests[name])
        assert server.ranges == [f"bytes={partial_size}-" for partial_size in [len(blobs[name]) // 2]]
    assert dest.read_bytes() == blobs[name]


def test_data_dir_is_read_and_checked(tiny_fashion, tmp_path):
    arrays, blobs, digests = tiny_fashion
    folder = tmp_path / "local"
    folder.mkdir()
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
    ds = fashion_mnist(resize_to=28, data_dir=folder, files=digests)
    np.testing.assert_array_equal(ds.val_x[:, 0] * 255, arrays["t10k-images-idx3-ubyte.gz"])
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(DataError, match="SHA-256"):
        fashion_mnist(resize_to=28, data_dir=folder, files=digests)


def test_idx_errors(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09abc"))
    with pytest.raises(DataError, match="promises 9"):
        read_idx(bad)


def test_resize_keeps_constants_and_means():
    x = np.full((2, 1, 8, 8), 0.25, np.float32)
    assert np.allclose(resize(x, 96), 0.25)
    ramp = np.tile(np.arange(8, dtype=np.float32), (1, 1, 8, 1))
    assert abs(resize(ramp, 32).mean() - ramp.mean()) < 1e-5


def test_batches_are_seeded_per_epoch():
    a = [b.tolist() for b in batches(10, 4, seed=1, epoch=0)]
    assert a == [b.tolist() for b in batches(10, 4, seed=1, epoch=0)]
    assert a != [b.tolist() for b in batches(10, 4, seed=1, epoch=1)]
    assert sorted(sum(a, [])) == list(range(10)) and [len(b) for b in a] == [4, 4, 2]


def test_digits_split_is_fixed():
    pytest.importorskip("sklearn")
    d1, d2 = data.digits(16), data.digits(16)
    assert d1.train_x.shape[1:] == (1, 16, 16) and len(d1.train_y) + len(d1.val_y) == 1797
    np.testing.assert_array_equal(d1.val_y, d2.val_y)


# -- hostile IDX files (issue 14) ------------------------------------------------------------


def unpacked_fashion(folder, arrays):
    """The four files unpacked into ``folder`` (trusted as they are: no checksum for unpacked copies)."""
    folder.mkdir(exist_ok=True)
    for name, array in arrays.items():
        (folder / name[:-3]).write_bytes(gzip.decompress(idx_bytes(array)))
    return folder


def test_idx_header_cut_short_is_one_line(tmp_path):
    short = tmp_path / "train-images-idx3-ubyte"
    short.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x06\x00")  # 3 dimensions promised, 1.25 given
    with pytest.raises(DataError, match="header cut short") as info:
        read_idx(short)
    assert str(short) in str(info.value) and "\n" not in str(info.value)
    zero_dims = tmp_path / "zero"
    zero_dims.write_bytes(b"\x00\x00\x08\x00abc")
    with pytest.raises(DataError, match="no dimensions"):
        read_idx(zero_dims)


def test_idx_header_promising_more_than_int64_is_refused(tmp_path):
    huge = tmp_path / "huge"
    huge.write_bytes(struct.pack(">HBB", 0, 8, 4) + struct.pack(">4I", *[2**32 - 1] * 4) + b"abc")
    with pytest.raises(DataError, match="promises"):
        read_idx(huge)


def test_damaged_gzip_is_one_line(tmp_path):
    damaged = tmp_path / "x.gz"
    blob = bytearray(idx_bytes(np.arange(600).reshape(6, 10, 10)))
    blob[20:40] = b"\xff" * 20
    damaged.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="cannot read"):
        read_idx(damaged)


def test_labels_outside_the_classes_are_refused(tiny_fashion, tmp_path):
    arrays, _, digests = tiny_fashion
    arrays = dict(arrays, **{"t10k-labels-idx1-ubyte.gz": np.array([1, 2, 12, 3])})
    folder = unpacked_fashion(tmp_path / "local", arrays)
    with pytest.raises(DataError, match="label 12 at index 2 is outside the 10 classes") as info:
        fashion_mnist(resize_to=8, data_dir=folder, files=digests)
    assert "t10k-labels-idx1-ubyte" in str(info.value)


def test_image_and_label_counts_must_agree(tiny_fashion, tmp_path):
    arrays, _, digests = tiny_fashion
    arrays = dict(arrays, **{"train-labels-idx1-ubyte.gz": arrays["train-labels-idx1-ubyte.gz"][:5]})
    folder = unpacked_fashion(tmp_path / "local", arrays)
    with pytest.raises(DataError, match="holds 6 images but .* holds 5 labels"):
        fashion_mnist(resize_to=8, data_dir=folder, files=digests)


def test_images_of_the_wrong_rank_or_none_are_refused(tiny_fashion, tmp_path):
    arrays, _, digests = tiny_fashion
    flat = dict(arrays, **{"train-images-idx3-ubyte.gz": np.zeros(6)})
    with pytest.raises(DataError, match=r"expected images \(count, height, width\)"):
        fashion_mnist(resize_to=8, data_dir=unpacked_fashion(tmp_path / "a", flat), files=digests)
    empty = dict(arrays, **{"train-images-idx3-ubyte.gz": np.zeros((0, 28, 28)),
                            "train-labels-idx1-ubyte.gz": np.zeros(0)})
    with pytest.raises(DataError, match="holds no images"):
        fashion_mnist(resize_to=8, data_dir=unpacked_fashion(tmp_path / "b", empty), files=digests)


def test_resize_in_blocks_equals_one_block(monkeypatch):
    x = np.random.default_rng(0).random((7, 1, 8, 8), dtype=np.float32)
    whole = resize(x, 20)
    monkeypatch.setattr(data, "RESIZE_BLOCK_VALUES", 1)  # one image per block
    np.testing.assert_array_equal(resize(x, 20), whole)


def test_dataset_sizes_are_known_before_loading():
    pytest.importorskip("sklearn")
    digits = data.digits(8)
    assert (len(digits.train_y), len(digits.val_y)) == (data.info("digits").train, data.info("digits").val)
    assert data.info("fashion-mnist").nbytes(96) == 70_000 * 96 * 96 * 4
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        data.info("mnist")
