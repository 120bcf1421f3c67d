"""``python -m resnet_multi.gpucheck``: the prepared GPU check (resnet_multi.run.gpucheck), one command, no nox."""

from resnet_multi.run.gpucheck import main

if __name__ == "__main__":
    raise SystemExit(main())
