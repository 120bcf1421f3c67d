"""Backend tests run once per selected backend, each in its own environment (see noxfile.py).

In a nox backend session RESNET_MULTI_REQUIRE_BACKEND is set: a framework
that fails to import there is a failure, never a skip.
"""

from __future__ import annotations

import os

import pytest

from resnet_multi import faces
from resnet_multi.errors import BackendUnavailable


def _selected(config: pytest.Config) -> list[str]:
    chosen = [faces.canonical_name(b) for b in config.getoption("--backend")]
    return chosen or faces.names()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", _selected(metafunc.config), scope="session")


@pytest.fixture(scope="session")
def face(backend) -> faces.BackendFace:
    """The backend's face, its framework imported (skipped where it is not installed)."""
    try:
        faces.backend(backend).module("model")
        return faces.backend(backend)
    except BackendUnavailable as exc:
        if os.environ.get("RESNET_MULTI_REQUIRE_BACKEND") == backend:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
