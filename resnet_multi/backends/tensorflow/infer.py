"""The inference fast path in TensorFlow (Keras 3): a folded model in one tf.function.

``for_inference`` (faces.py) folds the BNs into the convs (resnet_multi.weights.fold) and
builds the folded spec with model.build; ``fast`` here traces its forward pass
(training=False) as one tf.function, once per NHWC input shape. On a CPU it is a plain
graph: TensorFlow's graph optimizer (grappler's remapper) then fuses each conv with its
bias and ReLU into one oneDNN kernel, which XLA's CPU convolutions do not match (measured:
docs/benchmarks.md); on a GPU it is compiled by XLA (jit_compile=True).

The result is the folded keras.Model itself, with ``infer`` (NHWC tensor -> output) set:
model.forward and bench.py call it; the layer table still runs model.row_functions.
"""

from __future__ import annotations

from functools import partial

import keras
import tensorflow as tf

from .model import device_of


def use_xla(device: str) -> bool:
    return device.startswith("GPU")


def fast(model: keras.Model, compile: bool = True) -> keras.Model:
    xla = compile and use_xla(device_of(model))
    # Traced per input shape: with the shapes known, grappler fuses conv+bias+ReLU (an input_signature
    # of unknown sizes ran ResNet-50 at about 0.6x on this CPU).
    model.infer = tf.function(partial(model, training=False), jit_compile=xla)
    model.practice = ["folded BN", "NHWC", "XLA (tf.function jit_compile=True)" if xla
                      else "tf.function graph (grappler conv+bias+ReLU fusion)"]
    return model
