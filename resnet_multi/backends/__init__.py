"""Framework lowerings of the resnet-multi spec, one package per framework.

Each package has the same files (model, weights, files, train, bench) so that
two frameworks read side by side; what they share is in ``common``. None is
imported by the core at import time: ``resnet_multi.faces`` loads them on
first use.
"""
