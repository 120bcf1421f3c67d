"""Pretrained weights by name: download (pooch), verify, convert to canonical once, cache.

``canonical_file(spec, "torchvision/IMAGENET1K_V1")`` is the path of that entry's weights as a
canonical ``.safetensors`` file, made on first use and read from the cache after that:

1. the entry (a user's first, then the registry's: resnet_multi/weights/registry.py), or a local
   weights file given by its path;
2. its file, downloaded with pooch to ``<cache>/downloads/<host>/<path>`` through a staging name in the
   same folder, then checked against every checksum the entry has (``sha256``; the source's own:
   torchvision's sha256 prefix, keras's md5, Gluon's sha1 of the ``.params`` inside its zip) and only
   then renamed to its own name: a failed or mismatching download leaves nothing behind;
3. read by ``convert``'s reader of the entry's format (in that backend's environment when the framework
   is not here) into ``<cache>/<arch>/<name>.safetensors``, with a ``.source.json`` beside it naming
   what it was made from (a changed entry is converted again). The second use needs no framework.

Environment: ``RESNET_MULTI_CACHE`` (the cache folder; default ``~/.cache/resnet-multi/weights``),
``RESNET_MULTI_OFFLINE=1`` (the cache only: what is missing is named in one line),
``RESNET_MULTI_WEIGHTS_MIRROR=http://host:port/`` (replaces the scheme and host of every URL).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from resnet_multi.arch.presets import resolve as resolve_spec
from resnet_multi.arch.spec import ResNetSpec
from resnet_multi.errors import UserError
from resnet_multi.files import atomic_write
from resnet_multi.run.convert import convert, guess_format
from resnet_multi.weights import registry
from resnet_multi.weights.canonical import State, load_state
from resnet_multi.weights.registry import Entry, UnknownWeights

CACHE_VAR = "RESNET_MULTI_CACHE"
OFFLINE_VAR = "RESNET_MULTI_OFFLINE"
MIRROR_VAR = "RESNET_MULTI_WEIGHTS_MIRROR"
DEFAULT_CACHE = Path("~/.cache/resnet-multi/weights")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".h5", ".msgpack", ".params")
TIMEOUT_S = 60  # per connect and per read: a stalled server is an error, never a hang


class FetchError(UserError):
    """A download that failed or did not match its checksum, or an offline cache without the file."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_VAR) or DEFAULT_CACHE).expanduser()


def offline() -> bool:
    return os.environ.get(OFFLINE_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def mirrored(url: str) -> str:
    """``url`` with the scheme and host of ``$RESNET_MULTI_WEIGHTS_MIRROR`` (a path of the mirror goes first)."""
    mirror = os.environ.get(MIRROR_VAR, "").strip()
    if not mirror:
        return url
    to = urlsplit(mirror)
    if to.scheme not in ("http", "https") or not to.netloc:
        raise UserError(f"{MIRROR_VAR}={mirror!r}: expected http(s)://host[:port]/")
    parts = urlsplit(url)
    return urlunsplit((to.scheme, to.netloc, to.path.rstrip("/") + parts.path, parts.query, ""))


def _safe(part: str) -> str:
    part = re.sub(r"[^A-Za-z0-9._+=-]", "_", part)
    return "_" if part in ("", ".", "..") else part


def canonical_path(entry: Entry) -> Path:
    """Where the entry's canonical file is cached: ``<cache>/<arch>/<name>.safetensors``."""
    *folders, last = entry.name.split("/")
    return cache_dir().joinpath(_safe(entry.arch), *map(_safe, folders), _safe(last) + ".safetensors")


def download_path(entry: Entry) -> Path:
    """Where the entry's file is kept once verified: ``<cache>/downloads/<host>/<path>`` of its own URL."""
    parts = urlsplit(entry.url)
    folders = [p for p in parts.path.split("/") if p]
    return cache_dir().joinpath("downloads", _safe(parts.netloc), *map(_safe, folders))


def member_path(entry: Entry, archive: Path) -> Path:
    """The weights file taken out of the entry's archive, beside it."""
    return archive.with_name(_safe(Path(entry.data["archive"]["member"]).name))


def resolve(arch: str, weights: str | os.PathLike) -> Entry | Path:
    """A weights name of ``arch`` (a user's entry, then the registry's) or a local weights file."""
    if isinstance(weights, os.PathLike):
        return _local(Path(weights))
    if not isinstance(weights, str) or not weights:
        raise UserError(f"weights: expected a weights name or a file path, got {weights!r}")
    try:
        return registry.get(arch, weights)
    except UnknownWeights:
        path = Path(weights).expanduser()
        if path.is_file() or path.is_dir() or weights.lower().endswith(WEIGHT_SUFFIXES):
            return _local(path)
        raise


def _local(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    return path


# -- checksums -------------------------------------------------------------------------------


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new("sha256" if algorithm == "sha256-prefix" else algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(entry: Entry, file: Path, member: Path | None, label: str | None = None) -> str | None:
    """What does not match, in words, or None when every checksum the entry has holds (with no ``member``
    yet, those of the archive's member are left for later)."""
    checks = [("sha256", entry.sha256, file)] if entry.sha256 else []
    checksum = entry.data.get("checksum")
    target = member if checksum is not None and checksum["of"] == "archive member" else file
    if checksum is not None and target is not None:
        checks.append((checksum["algorithm"], checksum["value"], target))
    for algorithm, want, path in checks:
        got = _digest(path, algorithm)
        if not (got.startswith(want) if algorithm == "sha256-prefix" else got == want):
            shown = got[: len(want)] if algorithm == "sha256-prefix" else got
            return f"{algorithm} of {label if path == file and label else path.name} is {shown}, expected {want}"
    return None


def _verified(entry: Entry, file: Path) -> Path | None:
    """The file to read (the archive's member taken out) if ``file`` holds, else None with nothing left."""
    member = None
    try:
        if "archive" in entry.data:
            member = member_path(entry, file)
            if not member.is_file():
                _extract(entry, file, member)
        if _mismatch(entry, file, member) is None:
            return member or file
    except (OSError, zipfile.BadZipFile, KeyError):
        pass
    for path in (file, member):
        if path is not None:
            path.unlink(missing_ok=True)
    return None


def _extract(entry: Entry, archive: Path, member: Path) -> None:
    name = entry.data["archive"]["member"]
    with zipfile.ZipFile(archive) as zf:
        atomic_write(member, lambda tmp: tmp.write_bytes(zf.read(name)))


# -- download --------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def download(entry: Entry, quiet: bool = False) -> Path:
    """The entry's verified weights file (downloaded once; a local entry's own file)."""
    where = f"{entry.arch} {entry.name}"
    if entry.is_local:
        path = _local(Path(entry.url))
        problem = _mismatch(entry, path, None)
        if problem:
            raise FetchError(f"{where}: {path}: {problem}")
        return path
    final = download_path(entry)
    if final.is_file():
        found = _verified(entry, final)
        if found is not None:
            return found
    url = mirrored(entry.url)
    if offline():
        raise FetchError(f"{where}: not in the cache and {OFFLINE_VAR} is set: missing {final} (from {url})")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.download")
    staging.unlink(missing_ok=True)
    try:
        _pooch_get(url, staging, progressbar=not quiet and sys.stderr.isatty())
    except Exception as exc:  # requests' and pooch's errors: one line, the staging file is gone
        staging.unlink(missing_ok=True)
        raise FetchError(f"{where}: download of {url} failed: {_one_line(exc)}") from None
    problem = _mismatch(entry, staging, None, label=final.name)
    if problem:
        staging.unlink(missing_ok=True)
        raise FetchError(f"{where}: download of {url} does not match: {problem}; nothing was kept")
    os.replace(staging, final)
    found = _verified(entry, final)
    if found is None:
        raise FetchError(f"{where}: download of {url} does not match its {entry.data.get('checksum', {}).get('algorithm', 'checksum')} "
                         "(or is no readable archive); nothing was kept")
    return found


def _pooch_get(url: str, path: Path, progressbar: bool) -> None:
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)  # pooch's "downloading" and "use this hash" lines: we check the hashes
    try:
        downloader = pooch.HTTPDownloader(progressbar=progressbar, timeout=TIMEOUT_S)
        pooch.retrieve(url, known_hash=None, fname=path.name, path=path.parent, downloader=downloader)
    finally:
        logger.setLevel(level)


# -- canonical -------------------------------------------------------------------------------


def _identity(entry: Entry) -> dict[str, Any]:
    """What the cached canonical file was made from: a change makes it again."""
    keys = ("url", "sha256", "checksum", "archive", "format")
    ident: dict[str, Any] = {k: entry.to_dict().get(k) for k in keys}
    if entry.is_local and not entry.sha256:
        stat = Path(entry.url).stat()
        ident["file"] = [stat.st_size, stat.st_mtime_ns]
    return ident


def canonical_file(spec: str | ResNetSpec, weights: str | os.PathLike, quiet: bool = False,
                   python: dict[str, str] | None = None) -> Path:
    """The canonical ``.safetensors`` file of ``weights`` (a name or a path) for ``spec``.

    A registry or user entry is downloaded, verified and converted once, then read from the cache; a
    canonical file given by path is itself; another local file is converted on each call (to a
    temporary file: ``load`` reads it).
    """
    spec = resolve_spec(spec)
    found = resolve(spec.name, weights)
    if isinstance(found, Path):
        return found
    entry = found
    out = canonical_path(entry)
    sidecar = out.with_name(out.name[: -len(".safetensors")] + ".source.json")
    ident = _identity(entry)
    if out.is_file() and sidecar.is_file():
        try:
            if json.loads(sidecar.read_text(encoding="utf-8")) == ident:
                return out
        except (OSError, ValueError):
            pass
    src = download(entry, quiet=quiet)
    out.parent.mkdir(parents=True, exist_ok=True)
    sidecar.unlink(missing_ok=True)
    convert(src, out, arch=spec, src_format=entry.format, dst_format="canonical", python=python)
    atomic_write(sidecar, json.dumps(ident, indent=1, sort_keys=True) + "\n")
    return out


def load(spec: str | ResNetSpec, weights: str | os.PathLike, quiet: bool = False,
         python: dict[str, str] | None = None) -> State:
    """The canonical state of ``weights`` for ``spec`` (checked against it: a file that does not fit is refused)."""
    import tempfile

    spec = resolve_spec(spec)
    found = resolve(spec.name, weights)
    if isinstance(found, Path) and guess_format(found, spec) != "canonical":
        with tempfile.TemporaryDirectory(prefix="resnet-multi-weights-") as tmp:
            middle = Path(tmp) / "canonical.safetensors"
            convert(found, middle, arch=spec, dst_format="canonical", python=python)
            return load_state(middle, spec)
    return load_state(canonical_file(spec, weights, quiet=quiet, python=python), spec)
