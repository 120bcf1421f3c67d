"""The command line: ``resnet-multi``, its readable tables and its plots."""

from resnet_multi.cli.commands import main

__all__ = ["main"]
