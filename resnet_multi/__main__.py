from resnet_multi.cli import main

raise SystemExit(main())
