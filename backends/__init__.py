"""Framework lowerings of the resnet-multi spec, one package per framework.

Each package has the same files (model, weights, train, bench) so that two
frameworks can be read side by side. None is imported by the core at import
time: resnet_multi.registry loads them on demand.
"""
