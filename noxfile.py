"""One environment per framework: MXNet (numpy<1.24) and JAX (numpy>=2) never share one.

    nox                 # every test session: core, torch, tensorflow, flax, mxnet
    nox -s torch -- -x  # one backend; arguments after -- go to pytest
"""

from __future__ import annotations

import nox

nox.options.sessions = ["core", "torch", "tensorflow", "flax", "mxnet"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "virtualenv"

PYTHON = "3.11"
BACKENDS = ("torch", "tensorflow", "flax", "mxnet")


def _install(session: nox.Session, extra: str | None) -> None:
    extras = "test" if extra is None else f"test,{extra}"
    # Editable: backends/ maps onto resnet_multi.backends from the source tree.
    session.install("-e", f".[{extras}]")


@nox.session(python=PYTHON)
def core(session: nox.Session) -> None:
    """Core tests with no framework installed at all."""
    _install(session, None)
    session.run("pytest", "tests/core", *session.posargs)


def _backend_session(backend: str):
    def run(session: nox.Session) -> None:
        _install(session, backend)
        # A backend session must not skip its own backend: missing means failure.
        session.env["RESNET_MULTI_REQUIRE_BACKEND"] = backend
        session.run("pytest", "tests/backends", "--backend", backend, *session.posargs)

    run.__doc__ = f"Backend tests for {backend} in its own environment."
    return run


for _name in BACKENDS:
    nox.session(python=PYTHON, name=_name)(_backend_session(_name))
