"""The types of the command line's arguments: every number and name a user gives, checked at parse time.

Each is an argparse ``type=`` function: a value out of range (a negative
seed, a learning rate of nan, a batch of 0) is argparse's one-line error and
exit 2, before any command starts.
"""

from __future__ import annotations

import argparse
import math

from resnet_multi import faces
from resnet_multi.arch import presets
from resnet_multi.errors import UserError


def input_shape_arg(text: str) -> tuple[int, int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W with three positive integers, got {text!r}")
    return dims  # type: ignore[return-value]


def _int_in(text: str, low: int, high: int | None, what: str) -> int:
    try:
        value = int(text)
    except ValueError:  # also a number with thousands of digits (Python refuses to parse those)
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_in(text, 1, None, "a positive integer")


def nonnegative_int(text: str) -> int:
    return _int_in(text, 0, None, "an integer >= 0")


def indices_arg(text: str) -> tuple[int, ...]:
    """'1,2,3,4' -> (1, 2, 3, 4): a feature extractor's stage indices (their range is checked against the model)."""
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 0 or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"expected increasing stage indices such as 1,2,3,4 (0 = the stem), "
                                         f"got {text!r}")
    return values


SEED_MAX = 2**32 - 1  # the widest seed every framework's RNG takes


def seed_arg(text: str) -> int:
    return _int_in(text, 0, SEED_MAX, f"a seed from 0 to {SEED_MAX}")


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None  # nan, inf


def learning_rate_arg(text: str) -> float:
    value = _float(text)
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite learning rate > 0, got {text!r}")
    return value


def momentum_arg(text: str) -> float:
    value = _float(text)
    if value is None or not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a momentum in [0, 1), got {text!r}")
    return value


def backend_arg(text: str) -> str:
    try:
        return faces.canonical_name(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def backends_arg(text: str) -> list[str]:
    names = [backend_arg(b.strip()) for b in text.split(",") if b.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of backends, got {text!r}")
    return list(dict.fromkeys(names))  # each once, in the order given


def backends_or_all_arg(text: str) -> list[str]:
    """``all`` (every backend) or a comma-separated list."""
    return list(faces.names()) if text.strip().lower() == "all" else backends_arg(text)


def preset_arg(text: str) -> str:
    """A preset's name (not a spec file): an unknown one is argparse's one-line error, with a suggestion."""
    try:
        presets.get(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def path_arg(text: str) -> str:
    # No file system takes a NUL in a name; Python raises ValueError (not OSError) deep inside otherwise.
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"a file name cannot contain a NUL character: {text!r}")
    return text


DEVICE_FORMS = "auto, cpu, gpu or gpu:N (cuda, cuda:N)"


def device_arg(text: str) -> str:
    # The form only; whether the device is there is the backend's answer (DeviceUnavailable).
    name = text.strip().lower()
    kind, colon, index = name.partition(":")
    number_ok = not colon or (index.isascii() and index.isdigit())
    if name != "auto" and (kind not in ("cpu", "gpu", "cuda") or not number_ok):
        raise argparse.ArgumentTypeError(f"expected {DEVICE_FORMS}, got {text!r}")
    return text.strip()
