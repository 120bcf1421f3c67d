"""The weight-file formats, by name, and the backend that reads and writes each (None: the core).

One table for ``resnet-multi convert`` (resnet_multi/run/convert.py) and the weights
registry (resnet_multi/weights/registry.py); each backend's files.py lists its own.
"""

from __future__ import annotations

FORMATS: dict[str, str | None] = {
    "canonical": None, "torch": "torch", "keras": "tensorflow", "keras-applications": "tensorflow",
    "flax": "flax", "gluon": "mxnet", "gluon-zoo": "mxnet", "gluoncv-v1b": "mxnet",
}
