"""Weights by name (resnet_multi/run/fetch.py): download, verification, caching, offline, mirror, user entries.

No framework and no internet: a canonical file made here is served by a loopback HTTP server on
127.0.0.1 (tests/core/weights_server.py) that counts the requests it gets.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import resnet_multi
from resnet_multi.arch import presets
from resnet_multi.errors import UserError
from resnet_multi.run import fetch
from resnet_multi.weights import registry
from resnet_multi.weights.canonical import init_weights, save_state
from resnet_multi.weights.registry import RegistryError, UnknownWeights

from .weights_server import serve

ARCH = "resnet20"  # the smallest preset: a canonical file of about 1 MB
PATH = "/models/resnet20-test.safetensors"


@pytest.fixture(autouse=True)
def clean(tmp_path, monkeypatch):
    monkeypatch.setenv(fetch.CACHE_VAR, str(tmp_path / "cache"))
    monkeypatch.delenv(fetch.OFFLINE_VAR, raising=False)
    monkeypatch.delenv(fetch.MIRROR_VAR, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    registry.clear_user_entries()
    yield
    registry.clear_user_entries()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    spec = presets.get(ARCH)
    state = init_weights(spec, seed=7, perturb_bn=True)
    path = tmp_path_factory.mktemp("ckpt") / "resnet20.safetensors"
    save_state(state, path, spec)
    return state, path, path.read_bytes()


@pytest.fixture
def server(checkpoint):
    with serve() as srv:
        srv.files[PATH] = checkpoint[2]
        yield srv


def entry(url: str, sha256: str, name: str = "test/canonical", **more) -> dict:
    return {"name": name, "arch": ARCH, "url": url, "sha256": sha256, "format": "canonical",
            "preprocessing": "torchvision/IMAGENET1K_V2", **more}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_files() -> list[Path]:
    return sorted(p for p in fetch.cache_dir().rglob("*") if p.is_file()) if fetch.cache_dir().exists() else []


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def same(state, expected) -> None:
    assert set(state) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(np.asarray(state[key]), expected[key])


def test_download_verify_convert_and_cache(server, checkpoint):
    registry.register(entry(server.url(PATH), sha(checkpoint[2])))
    out = fetch.canonical_file(ARCH, "test/canonical")
    assert out == fetch.cache_dir() / ARCH / "test" / "canonical.safetensors"
    assert server.requests[PATH] == 1
    same(fetch.load(ARCH, "test/canonical"), checkpoint[0])
    assert fetch.canonical_file(ARCH, "test/canonical") == out
    assert server.requests[PATH] == 1  # the second and third use make no request
    assert fetch.download_path(registry.get(ARCH, "test/canonical")).read_bytes() == checkpoint[2]
    assert not [p for p in cache_files() if ".download" in p.name or ".partial" in p.name]


def test_offline_uses_the_cache_and_names_what_is_missing(server, checkpoint, monkeypatch):
    registry.register(entry(server.url(PATH), sha(checkpoint[2])))
    monkeypatch.setenv(fetch.OFFLINE_VAR, "1")
    with pytest.raises(fetch.FetchError) as exc:
        fetch.load(ARCH, "test/canonical")
    text = one_line(exc)
    assert "test/canonical" in text and fetch.OFFLINE_VAR in text and "resnet20-test.safetensors" in text
    assert server.requests[PATH] == 0 and cache_files() == []
    monkeypatch.delenv(fetch.OFFLINE_VAR)
    fetch.canonical_file(ARCH, "test/canonical")
    monkeypatch.setenv(fetch.OFFLINE_VAR, "1")
    same(fetch.load(ARCH, "test/canonical"), checkpoint[0])  # from the cache, offline
    assert server.requests[PATH] == 1


def test_checksum_mismatch_keeps_nothing(server, checkpoint):
    registry.register(entry(server.url(PATH), sha(b"something else")))
    with pytest.raises(fetch.FetchError) as exc:
        fetch.canonical_file(ARCH, "test/canonical")
    assert "does not match" in one_line(exc) and "sha256" in str(exc.value)
    assert cache_files() == []


def test_truncated_transfer_keeps_nothing(server, checkpoint):
    server.truncate.add(PATH)
    registry.register(entry(server.url(PATH), sha(checkpoint[2])))
    with pytest.raises(fetch.FetchError) as exc:
        fetch.canonical_file(ARCH, "test/canonical")
    one_line(exc)
    assert cache_files() == []
    server.truncate.clear()  # the next try downloads it whole
    fetch.canonical_file(ARCH, "test/canonical")
    assert server.requests[PATH] == 2


def test_missing_file_on_the_server_is_one_line(server, checkpoint):
    registry.register(entry(server.url("/models/absent.safetensors"), sha(checkpoint[2])))
    with pytest.raises(fetch.FetchError) as exc:
        fetch.canonical_file(ARCH, "test/canonical")
    assert "404" in one_line(exc)
    assert cache_files() == []


def test_unknown_weights_name_is_one_line():
    with pytest.raises(UnknownWeights) as exc:
        fetch.load(ARCH, "test/nope")
    assert "test/nope" in one_line(exc)
    with pytest.raises(UnknownWeights):  # before any framework is asked for
        resnet_multi.build("resnet18", backend="torch", weights="torchvision/IMAGENET1K_V3")
    with pytest.raises(UserError) as exc:
        fetch.load(ARCH, "missing/file.safetensors")
    assert "no such weights file" in one_line(exc)


def test_mirror_replaces_scheme_and_host(server, checkpoint, monkeypatch):
    registry.register(entry("https://weights.example.invalid" + PATH, sha(checkpoint[2])))
    monkeypatch.setenv(fetch.MIRROR_VAR, server.root)
    assert fetch.mirrored("https://a.example/x/y.pth") == server.root + "x/y.pth"
    same(fetch.load(ARCH, "test/canonical"), checkpoint[0])
    assert server.requests[PATH] == 1
    # cached under the entry's own host, whatever the mirror
    assert (fetch.cache_dir() / "downloads" / "weights.example.invalid").is_dir()
    monkeypatch.setenv(fetch.MIRROR_VAR, "ftp://nowhere")
    with pytest.raises(UserError):
        fetch.mirrored("https://a.example/x.pth")


def test_a_local_path_works_as_weights(checkpoint):
    same(fetch.load(ARCH, str(checkpoint[1])), checkpoint[0])
    same(fetch.load(ARCH, checkpoint[1]), checkpoint[0])
    assert cache_files() == []  # a file given by path is read where it is


def test_user_file_local_entry_and_info(checkpoint, tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "mine.safetensors").write_bytes(checkpoint[2])
    toml = tmp_path / "entries.toml"
    toml.write_text(f'''
[[weights]]
name = "site/mine"
arch = "{ARCH}"
url = "w/mine.safetensors"
sha256 = "{sha(checkpoint[2])}"
format = "canonical"
preprocessing = "torchvision/IMAGENET1K_V2"
categories = {[f"class {i}" for i in range(10)]!r}
'''.replace("'", '"'))
    (found,) = resnet_multi.register_weights(toml)
    assert found.url == str(tmp_path / "w" / "mine.safetensors") and found.origin == str(toml)
    info = resnet_multi.weights_info(ARCH, "site/mine")
    assert info.preprocessing["resize"] == 232 and info.categories[:2] == ["class 0", "class 1"]
    assert "site/mine" in registry.names(ARCH)
    same(fetch.load(ARCH, "site/mine"), checkpoint[0])
    assert fetch.canonical_path(info).is_file()


def test_a_changed_entry_is_fetched_again(server, checkpoint):
    registry.register(entry(server.url(PATH), sha(checkpoint[2])))
    fetch.canonical_file(ARCH, "test/canonical")
    spec = presets.get(ARCH)
    other = init_weights(spec, seed=8)
    path2 = "/models/resnet20-other.safetensors"
    server.files[path2] = save_state(other, fetch.cache_dir() / "other.safetensors", spec).read_bytes()
    registry.register(entry(server.url(path2), sha(server.files[path2])))  # the same name, replaced
    same(fetch.load(ARCH, "test/canonical"), other)


def test_user_entries_are_checked(checkpoint):
    with pytest.raises(RegistryError, match="built-in"):
        registry.register({**entry("https://h.example/a.pth", sha(b"x"), name="torchvision/IMAGENET1K_V1"),
                           "arch": "resnet18", "format": "torch"})
    with pytest.raises(RegistryError, match="sha256: missing"):
        registry.register({k: v for k, v in entry("https://h.example/a.pth", "0" * 64).items() if k != "sha256"})
    with pytest.raises(RegistryError, match="categories"):
        registry.register(entry("https://h.example/a.pth", "0" * 64, categories="imagenet-1k"))  # 10 classes
    with pytest.raises(RegistryError, match="ARCH:keras/imagenet"):
        registry.register(entry("https://h.example/a.pth", "0" * 64, preprocessing="keras/imagenet"))
    (ok,) = registry.register(entry("https://h.example/a.pth", "0" * 64,
                                    preprocessing="resnet50_v2:keras/imagenet"))
    assert ok.preprocessing["mean"] == [127.5, 127.5, 127.5]
    with pytest.raises(RegistryError, match="url"):
        registry.register(entry("ftp://h.example/a.pth", "0" * 64))
