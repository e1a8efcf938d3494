"""``python -m gcfork``: the ``gcfork`` command."""

from gcfork.cli import main

raise SystemExit(main())
