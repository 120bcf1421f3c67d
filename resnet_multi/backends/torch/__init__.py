"""The torch lowering of resnet-multi."""
