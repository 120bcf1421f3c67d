"""The flax lowering of resnet-multi."""
