"""``python -m serving``: the same as ``fmnist-serve``."""

from serving.entry import main

raise SystemExit(main())
