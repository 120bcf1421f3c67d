"""One environment per framework: MXNet (numpy<1.24) and JAX (numpy>=2) never share one.

    nox                 # every test session: core, wheel, torch, tensorflow, flax, mxnet, interop
    nox -s wheel        # build the sdist and the wheel, install the wheel as a user would and run it
    nox -s torch -- -x  # one backend; arguments after -- go to pytest
"""

from __future__ import annotations

import sys

import nox

nox.options.sessions = ["core", "wheel", "torch", "tensorflow", "flax", "mxnet", "interop"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "virtualenv"

PYTHON = "3.11"
BACKENDS = ("torch", "tensorflow", "flax", "mxnet")
# Packages a backend's tests need beyond its extra: torchvision builds the
# reference checkpoints and models the importers and benchmarks compare with
# (this torch/torchvision pair is known to install and import together).
EXTRA_PACKAGES = {"torch": ("torch==2.14.1", "torchvision==0.29.1"),
                  # Restated so that no later install into this environment lifts numpy past MXNet's limit.
                  "mxnet": ("numpy<1.24",)}


def _install(session: nox.Session, extra: str | None) -> None:
    extras = "test,data,plot,report,predict" if extra is None else f"test,data,plot,report,predict,{extra}"
    # Editable: the checkout is what runs, so a session tests the working tree.
    session.install("-e", f".[{extras}]", *EXTRA_PACKAGES.get(extra or "", ()))


@nox.session(python=PYTHON)
def core(session: nox.Session) -> None:
    """Core tests with no framework installed at all."""
    _install(session, None)
    session.run("pytest", "tests/core", *session.posargs)


@nox.session(python=PYTHON)
def wheel(session: nox.Session) -> None:
    """Build the sdist and the wheel; install the wheel in a fresh venv (no framework), run it outside the checkout."""
    session.install("build>=1.0")
    session.run("python", "tests/packaging/smoke.py", *session.posargs)


def _backend_session(backend: str):
    def run(session: nox.Session) -> None:
        _install(session, backend)
        if backend == "mxnet":  # GluonCV's model files make the gluoncv/imagenet test checkpoints (no deps: opencv)
            session.install("--no-deps", "gluoncv==0.10.5.post0")
        # A backend session must not skip its own backend: missing means failure.
        session.env["RESNET_MULTI_REQUIRE_BACKEND"] = backend
        session.run("pytest", "tests/backends", "--backend", backend, *session.posargs)

    run.__doc__ = f"Backend tests for {backend} in its own environment."
    return run


for _name in BACKENDS:
    nox.session(python=PYTHON, name=_name)(_backend_session(_name))


@nox.session(python=PYTHON)
def interop(session: nox.Session) -> None:
    """torchvision, keras.applications and Gluon model-zoo checkpoints, each run in all four backends."""
    session.run(sys.executable, "-m", "nox", "-s", *BACKENDS, "--install-only", external=True)
    session.install("-e", ".")
    session.run("python", "tests/cross_env/run.py", session.create_tmp())


@nox.session(python=PYTHON)
def compare(session: nox.Session) -> None:
    """Main job: build the four backend environments, then compare the book's ResNet-18 across them.

    Prints compare's table and writes compare.png and the HTML report compare.html beside it
    (arguments after -- replace the preset and options: ``nox -s compare -- resnet50 --repeats 3``).
    """
    session.log("building the backend environments (first run: several GB, from the package index)")
    session.run(sys.executable, "-m", "nox", "-s", *BACKENDS, "--install-only", external=True)
    session.install("-e", ".[plot,report]")
    args = list(session.posargs or ["d2l_resnet18"])
    if "--plot" not in args:
        args += ["--plot", "compare.png"]
    session.run("resnet-multi", "report", *args, "--html", "compare.html")
