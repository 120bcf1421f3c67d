"""The core never imports a framework: checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "flax", "mxnet")


def test_import_pulls_in_no_framework():
    # Every core module (all but resnet_multi.backends.*), imported at once.
    code = ("import sys, json, importlib, pkgutil, resnet_multi;"
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(resnet_multi.__path__, 'resnet_multi.')"
            " if not m.name.startswith(('resnet_multi.backends', 'resnet_multi.__main__'))];"
            "resnet_multi.layer_table(resnet_multi.get_spec('resnet50'), (3, 64, 64));"
            "resnet_multi.backend('torch'); resnet_multi.backend('mxnet');"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_reference_imports_no_framework():
    code = ("import sys, json, numpy as np, resnet_multi.numerics.reference as r, "
            "resnet_multi.weights.canonical as w;"
            "s = __import__('resnet_multi').get_spec('resnet20');"
            "r.forward(s, w.init_weights(s), np.zeros((1, 3, 8, 8), np.float32));"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_missing_backend_names_the_extra():
    code = ("import resnet_multi\n"
            "try:\n    resnet_multi.build('resnet18', backend='mxnet')\n"
            "except resnet_multi.BackendUnavailable as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    try:
        import mxnet  # noqa: F401
    except ImportError:
        assert 'pip install "resnet-multi[mxnet]"' in out.stdout
