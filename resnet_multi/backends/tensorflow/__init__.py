"""The tensorflow lowering of resnet-multi."""
