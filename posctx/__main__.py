"""``python -m posctx`` is the ``posctx`` command."""

from posctx.cli import main

main()
