"""Errors a user can cause and fix. The CLI prints them as one line and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from a user: a name, a file, a shape, a missing framework."""


class SpecError(UserError, ValueError):
    """An invalid architecture spec. The message starts with the field's path."""


class BackendUnavailable(UserError, ImportError):
    """A backend whose framework is not installed, or an unknown backend name."""


class DeviceUnavailable(UserError, RuntimeError):
    """A device that was asked for but is not there."""


class PrecisionUnavailable(UserError, ValueError):
    """A precision that is unknown, or that this backend or device cannot run."""


class WorkerFailed(UserError, RuntimeError):
    """A worker of a data-parallel run died, failed or timed out: the whole run stops, in one line naming it."""
