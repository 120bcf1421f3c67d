"""The weights registry: published pretrained weights as data (``zoo.toml``), checked when it is read.

One ``[[weights]]`` table per entry, looked up by (preset, name):

- ``name`` (``torchvision/IMAGENET1K_V2``, ``keras/imagenet``, ``gluon/imagenet``, ``gluoncv/imagenet``),
  ``arch`` (our preset), ``url`` (the source's own location), ``format`` (one of ``resnet-multi convert``'s
  formats, so its readers are reused), ``categories`` (the name of a class-name list shipped beside this module),
  ``source`` (the framework file the entry was read from), optional ``note`` and ``sha256``;
- ``[weights.checksum]``: what the source publishes: ``algorithm`` (``sha256-prefix``: torchvision's
  hash in the file name; ``md5``: keras.applications; ``sha1``: the Gluon and GluonCV model stores; ``sha256``),
  ``value``, ``of`` (``file``, or ``archive member`` when the URL is an archive) and ``source``;
- ``[weights.archive]`` (optional): ``kind`` (``zip``) and ``member``, the weights file inside it;
- ``[weights.preprocessing]``: ``input_size``, optional ``resize`` (the shorter side), ``crop`` (a
  center crop), ``interpolation``, ``antialias``; ``channel_order`` (of the network's input: the image
  is read as RGB, ``BGR`` reverses it), ``value_range`` (the pixel range before the mean is taken
  off), ``mean`` and optional ``std`` (in that order and range; no ``std``: no division),
  ``function`` (the source's own code for it) and ``source``;
- ``[weights.accuracy]`` (where the source publishes one): ``dataset``, ``top1``, ``top5`` (percent), ``source``.

User entries (``register``, ``load_user_file``) have the same fields, with ``url`` an http(s) URL or a
local path, ``sha256`` (required for a URL) in place of ``checksum``, ``source`` optional,
``preprocessing`` a table or the name of an entry whose preprocessing to reuse (``ARCH:NAME`` where
presets differ), and ``categories`` optional (a list name or a list of class names). They are listed
after the built-in ones and never replace one.

Pure Python: no framework, no download (that is resnet_multi/run/fetch.py).
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from resnet_multi.arch import presets
from resnet_multi.errors import UserError
from resnet_multi.weights.formats import FORMATS

ZOO_FILE = Path(__file__).with_name("zoo.toml")
# A category list's name -> (its file beside this module, how many names it holds).
CATEGORY_SETS = {"imagenet-1k": ("imagenet_categories.txt", 1000)}
CHECKSUMS = {"sha256": 64, "md5": 32, "sha1": 40, "sha256-prefix": None}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
_HEX = re.compile(r"^[0-9a-f]+$")


class RegistryError(UserError, ValueError):
    """A registry entry that does not hold: the message starts with the file and the field's path."""


class UnknownWeights(UserError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    """One registry entry; ``data`` is the validated table, the same as ``weights show --json`` prints.

    ``origin`` is ``"zoo"`` for the built-in ones, else where the user entry came from (a file, or ``"python"``).
    """

    data: Mapping[str, Any]
    origin: str = "zoo"

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def arch(self) -> str:
        return self.data["arch"]

    @property
    def url(self) -> str:
        return self.data["url"]

    @property
    def format(self) -> str:
        return self.data["format"]

    @property
    def preprocessing(self) -> Mapping[str, Any]:
        return self.data["preprocessing"]

    @property
    def sha256(self) -> str | None:
        return self.data.get("sha256")

    @property
    def categories(self) -> list[str] | None:
        """The class names in class-index order (None: the entry names none)."""
        value = self.data.get("categories")
        return categories(value) if isinstance(value, str) else (list(value) if value is not None else None)

    @property
    def is_local(self) -> bool:
        """A user entry whose ``url`` is a path on this machine."""
        return urlsplit(self.url).scheme not in ("http", "https")

    @property
    def top1(self) -> float | None:
        return self.data.get("accuracy", {}).get("top1")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    def to_dict(self) -> dict[str, Any]:
        return _plain(self.data)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- the fields and their checks -------------------------------------------------------------


def _text(value: Any) -> bool:
    """a non-empty string without surrounding spaces"""
    return isinstance(value, str) and value.strip() == value and value != ""


def _number(value: Any) -> bool:
    """a finite number"""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value: Any) -> bool:
    """a positive integer"""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _numbers(n: int, positive: bool = False):
    def check(value: Any) -> bool:
        return (isinstance(value, list) and len(value) == n and all(_number(v) for v in value)
                and (not positive or all(v > 0 for v in value)))
    check.__doc__ = f"a list of {n} {'positive ' if positive else ''}numbers"
    return check


def _one_of(*choices: str):
    def check(value: Any) -> bool:
        return value in choices
    check.__doc__ = "one of " + ", ".join(choices)
    return check


def _url(value: Any) -> bool:
    """an http(s) URL of a file"""
    if not _text(value):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.path not in ("", "/")


def _url_or_path(value: Any) -> bool:
    """an http(s) URL of a file or a local path"""
    return _url(value) or (_text(value) and urlsplit(value).scheme in ("", "file") and "\x00" not in value)


def _sha256(value: Any) -> bool:
    """64 lower-case hex digits"""
    return isinstance(value, str) and len(value) == 64 and bool(_HEX.match(value))


def _category_value(value: Any) -> bool:
    """a category list's name (imagenet-1k) or a list of different class names"""
    if isinstance(value, str):
        return value in CATEGORY_SETS
    return isinstance(value, list) and bool(value) and all(_text(v) for v in value) and len(set(value)) == len(value)


def _percent(value: Any) -> bool:
    """a percentage from 0 to 100"""
    return _number(value) and 0 <= value <= 100


def _bool(value: Any) -> bool:
    """true or false"""
    return isinstance(value, bool)


# table -> field -> (check, required)
FIELDS: dict[str, dict[str, tuple[Any, bool]]] = {
    "": {"name": (_text, True), "arch": (_text, True), "url": (_url, True), "format": (_one_of(*FORMATS), True),
         "categories": (_one_of(*CATEGORY_SETS), True), "source": (_text, True), "note": (_text, False),
         "sha256": (_text, False), "checksum": (dict, True), "preprocessing": (dict, True),
         "accuracy": (dict, False), "archive": (dict, False)},
    "checksum": {"algorithm": (_one_of(*CHECKSUMS), True), "value": (_text, True),
                 "of": (_one_of("file", "archive member"), True), "source": (_text, True)},
    "archive": {"kind": (_one_of("zip"), True), "member": (_text, True)},
    "preprocessing": {"input_size": (_positive_int, True), "resize": (_positive_int, False),
                      "crop": (_positive_int, False), "interpolation": (_one_of(*INTERPOLATIONS), False),
                      "antialias": (_bool, False), "channel_order": (_one_of("RGB", "BGR"), True),
                      "value_range": (_numbers(2), True), "mean": (_numbers(3), True),
                      "std": (_numbers(3, positive=True), False), "function": (_text, True),
                      "source": (_text, True)},
    "accuracy": {"dataset": (_text, True), "top1": (_percent, True), "top5": (_percent, True),
                 "source": (_text, True)},
}


# A user entry: a URL or a local path, its sha256 instead of the source's checksum, any class names.
USER_FIELDS: dict[str, dict[str, tuple[Any, bool]]] = {
    **FIELDS,
    "": {**FIELDS[""], "url": (_url_or_path, True), "categories": (_category_value, False), "source": (_text, False),
         "sha256": (_sha256, False), "checksum": (dict, False)},
}


def _check_table(table: Any, kind: str, where: str, schema: Mapping[str, Any] = FIELDS) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise RegistryError(f"{where}: expected a table, got {type(table).__name__}")
    fields = schema[kind]
    for key in table:
        if key not in fields:
            raise RegistryError(f"{where}.{key}: unknown field; known: {', '.join(fields)}")
    out = {}
    for key, (check, required) in fields.items():
        if key not in table:
            if required:
                raise RegistryError(f"{where}.{key}: missing")
            continue
        value = table[key]
        if check is dict:
            out[key] = _check_table(value, key, f"{where}.{key}", schema)
        elif not check(value):
            raise RegistryError(f"{where}.{key}: expected {check.__doc__}, got {value!r}")
        else:
            out[key] = value
    return out


def check_entry(table: Any, where: str) -> Entry:
    """One ``[[weights]]`` table -> an Entry; any field of the wrong type or value is a RegistryError."""
    return Entry(_check_data(_check_table(table, "", where), where))


def _check_data(data: dict[str, Any], where: str) -> dict[str, Any]:
    """The checks across fields, for the built-in entries and the user's alike."""
    if "/" not in data["name"] or any(c.isspace() for c in data["name"]):
        raise RegistryError(f"{where}.name: expected SOURCE/TAG without spaces, got {data['name']!r}")
    if data["arch"] not in presets.names():
        raise RegistryError(f"{where}.arch: unknown preset {data['arch']!r}")
    checksum = data.get("checksum")
    if checksum is not None:
        length, value = CHECKSUMS[checksum["algorithm"]], checksum["value"]
        if not _HEX.match(value) or (len(value) != length if length else not 1 <= len(value) < 64):
            raise RegistryError(f"{where}.checksum.value: not a {checksum['algorithm']} in lower-case hex: {value!r}")
    if "sha256" in data and not _sha256(data["sha256"]):
        raise RegistryError(f"{where}.sha256: expected 64 lower-case hex digits, got {data['sha256']!r}")
    if checksum is not None and (checksum["of"] == "archive member") != ("archive" in data):
        raise RegistryError(f"{where}.checksum.of: 'archive member' goes with an [archive] table, 'file' without")
    pre = data["preprocessing"]
    low, high = pre["value_range"]
    if not low < high:
        raise RegistryError(f"{where}.preprocessing.value_range: expected [low, high] with low < high, got {[low, high]}")
    if "crop" in pre and pre["crop"] != pre["input_size"]:
        raise RegistryError(f"{where}.preprocessing.crop: the crop is the input, {pre['input_size']}; got {pre['crop']}")
    if "resize" in pre and pre["resize"] < pre["input_size"]:
        raise RegistryError(f"{where}.preprocessing.resize: {pre['resize']} is smaller than the input {pre['input_size']}")
    if "accuracy" in data and data["accuracy"]["top1"] > data["accuracy"]["top5"]:
        raise RegistryError(f"{where}.accuracy: top-1 above top-5")
    return data


def check_entries(tables: Any, where: str) -> list[Entry]:
    """Every table of a ``[[weights]]`` array; the same (arch, name) twice is an error."""
    if not isinstance(tables, list) or not tables:
        raise RegistryError(f"{where}: expected [[weights]] tables")
    found: list[Entry] = []
    seen: set[tuple[str, str]] = set()
    for i, table in enumerate(tables):
        entry = check_entry(table, f"{where}: weights[{i}]")
        key = (entry.arch, entry.name)
        if key in seen:
            raise RegistryError(f"{where}: weights[{i}]: {entry.arch} {entry.name} is listed twice")
        seen.add(key)
        found.append(entry)
    return found


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{path}: not valid TOML: {exc}") from None


# -- the registry --------------------------------------------------------------------------


@functools.cache
def _entries() -> tuple[Entry, ...]:
    data = _read_toml(ZOO_FILE)
    unknown = set(data) - {"weights"}
    if unknown:
        raise RegistryError(f"{ZOO_FILE}: unknown top-level keys {sorted(unknown)}")
    return tuple(check_entries(data.get("weights"), str(ZOO_FILE)))


def entries(arch: str | None = None) -> list[Entry]:
    """Every entry, in the file's order, then the user's; with ``arch``, that preset's (an unknown preset is an
    error)."""
    if arch is not None:
        presets.get(arch)  # UnknownPreset, with its suggestion
    return [e for e in (*_entries(), *_USER.values()) if arch is None or e.arch == arch]


# -- user entries ----------------------------------------------------------------------------

_USER: dict[tuple[str, str], Entry] = {}  # (arch, name) -> the user's entry, in the order registered


def _reused_preprocessing(arch: Any, name: str, where: str) -> dict[str, Any]:
    """The preprocessing of the entry called ``name`` (or ``ARCH:NAME``): of the same preset, else of any preset
    if they agree (their ``source`` aside)."""
    if ":" in name:
        arch, name = name.split(":", 1)
    same = [e for e in (*_entries(), *_USER.values()) if e.name == name]
    mine = [e for e in same if e.arch == arch]
    found = {repr({k: v for k, v in _plain(e.preprocessing).items() if k != "source"}): e for e in (mine or same)}
    if not found:
        close = difflib.get_close_matches(name, sorted({e.name for e in _entries()}), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise RegistryError(f"{where}: no entry {name!r} to reuse the preprocessing of{hint}")
    if len(found) > 1:
        raise RegistryError(f"{where}: the entries {name!r} of different presets preprocess differently; "
                            f"name one as ARCH:{name} or give the table itself")
    return _plain(next(iter(found.values())).preprocessing)


def check_user_entry(table: Any, where: str, base: Path | None = None, origin: str = "python") -> Entry:
    """A user's ``[[weights]]`` table -> an Entry (a relative local ``url`` is taken from ``base``)."""
    if isinstance(table, Entry):
        table = table.to_dict()
    if not isinstance(table, Mapping):
        raise RegistryError(f"{where}: expected a table, got {type(table).__name__}")
    table = dict(table)
    if isinstance(table.get("preprocessing"), str):
        table["preprocessing"] = _reused_preprocessing(table.get("arch"), table["preprocessing"],
                                                       f"{where}.preprocessing")
    data = _check_table(table, "", where, USER_FIELDS)
    if urlsplit(data["url"]).scheme in ("http", "https"):
        if "sha256" not in data and "checksum" not in data:
            raise RegistryError(f"{where}.sha256: missing (a URL's file is checked against it)")
    else:
        url = data["url"]
        path = Path(url[len("file://"):] if url.startswith("file://") else url).expanduser()
        data["url"] = str(path if path.is_absolute() or base is None else (base / path).resolve())
    data = _check_data(data, where)
    if "categories" in data:
        given = data["categories"]
        count = CATEGORY_SETS[given][1] if isinstance(given, str) else len(given)
        classes = presets.get(data["arch"]).num_classes
        if count != classes:
            raise RegistryError(f"{where}.categories: {count} class names for the {classes} classes of {data['arch']}")
    return Entry(data, origin)


def load_user_file(path: str | Path) -> list[Entry]:
    """The ``[[weights]]`` tables of a user's TOML file, checked (not registered: see ``register``)."""
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"{path}: no such file")
    data = _read_toml(path)
    unknown = set(data) - {"weights"}
    if unknown:
        raise RegistryError(f"{path}: unknown top-level keys {sorted(unknown)}")
    return _check_user_entries(data.get("weights"), str(path), path.resolve().parent, str(path))


def _check_user_entries(tables: Any, where: str, base: Path | None, origin: str) -> list[Entry]:
    if not isinstance(tables, list) or not tables:
        raise RegistryError(f"{where}: expected [[weights]] tables")
    found: dict[tuple[str, str], Entry] = {}
    builtin = {(e.arch, e.name) for e in _entries()}
    for i, table in enumerate(tables):
        entry = check_user_entry(table, f"{where}: weights[{i}]", base, origin)
        key = (entry.arch, entry.name)
        if key in found:
            raise RegistryError(f"{where}: weights[{i}]: {entry.arch} {entry.name} is listed twice")
        if key in builtin:
            raise RegistryError(f"{where}: weights[{i}]: {entry.arch} {entry.name} is a built-in entry; "
                                "give yours another name")
        found[key] = entry
    return list(found.values())


def register(source: Any) -> list[Entry]:
    """Add user entries: a TOML file's path, one table, a list of tables, or ``{"weights": [...]}``.

    All are checked before any is added; one the user registered before under the same (preset, name)
    is replaced, a built-in one never.
    """
    if isinstance(source, (str, Path)):
        found = load_user_file(source)
    else:
        if isinstance(source, Mapping) and set(source) == {"weights"}:
            source = source["weights"]
        tables = [source] if isinstance(source, (Mapping, Entry)) else source
        found = _check_user_entries(list(tables) if isinstance(tables, (list, tuple)) else tables, "entries",
                                    None, "python")
    for entry in found:
        _USER[(entry.arch, entry.name)] = entry
    return found


def clear_user_entries() -> None:
    """Forget every user entry (tests; a fresh start)."""
    _USER.clear()


def names(arch: str) -> list[str]:
    return [e.name for e in entries(arch)]


def get(arch: str, name: str) -> Entry:
    """The entry of ``arch`` called ``name``; an unknown one is a one-line UnknownWeights."""
    known = names(arch)
    for entry in entries(arch):
        if entry.name == name:
            return entry
    shown = repr(name) if len(name) <= 80 else repr(name[:80]) + "..."
    if not known:
        raise UnknownWeights(f"unknown weights {shown}: no published weights for {arch}; "
                             "see 'resnet-multi weights list'")
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise UnknownWeights(f"unknown weights {shown} for {arch}; known: {', '.join(known)}{hint}")


@functools.cache
def _categories(name: str) -> tuple[str, ...]:
    file, count = CATEGORY_SETS[name]
    path = Path(__file__).with_name(file)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    if len(lines) != count or len(set(lines)) != count or not all(_text(line) for line in lines):
        raise RegistryError(f"{path}: expected {count} different non-empty class names, one a line")
    return tuple(lines)


def categories(name: str) -> list[str]:
    """The class names of a category list (``"imagenet-1k"``), in class-index order."""
    if name not in CATEGORY_SETS:
        raise UserError(f"unknown category list {name!r}; known: {', '.join(CATEGORY_SETS)}")
    return list(_categories(name))


def _numbers_text(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def describe_preprocessing(pre: Mapping[str, Any]) -> str:
    """The preprocessing in words, e.g. for ``weights show``."""
    steps = []
    how = ", ".join(filter(None, [pre.get("interpolation"), "antialiased" if pre.get("antialias") else None]))
    if "resize" in pre:
        steps.append(f"resize the shorter side to {pre['resize']}" + (f" ({how})" if how else ""))
    if "crop" in pre:
        steps.append(f"center-crop {pre['crop']}x{pre['crop']}")
    if "resize" not in pre and "crop" not in pre:
        steps.append(f"a {pre['input_size']}x{pre['input_size']} input (the source names no resize or crop)")
    low, high = pre["value_range"]
    steps.append(f"values in [{low:g}, {high:g}]")
    steps.append("channels RGB" if pre["channel_order"] == "RGB" else "channels reversed to BGR")
    mean = f"subtract the mean {_numbers_text(pre['mean'])}"
    steps.append(f"{mean}, divide by the std {_numbers_text(pre['std'])}" if "std" in pre else f"{mean}, no scaling")
    return "; ".join(steps) + f" (as {pre['function']})"
