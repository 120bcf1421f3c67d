"""The mxnet lowering of resnet-multi."""
