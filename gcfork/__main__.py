"""``python -m gcfork``: the ``gcfork`` command."""

from gcfork.tools.cli import main

raise SystemExit(main())
