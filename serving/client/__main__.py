"""``python -m serving.client``: the same as ``fmnist``."""

from serving.client.cli import main

raise SystemExit(main())
