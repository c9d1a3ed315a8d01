"""``python -m serving``: the same as ``fmnist-serve``."""

from serving.cli import main

raise SystemExit(main())
