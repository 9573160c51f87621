"""``python -m shadowgate`` is the ``shadowgate`` command."""

from shadowgate.launcher import main

main()
