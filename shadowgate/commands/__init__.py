"""CLI subcommands, one module per area; imported lazily by shadowgate.cli."""
