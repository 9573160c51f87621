"""``python -m shadowgate`` is the ``shadowgate`` command."""

from shadowgate.cli import main

main()
