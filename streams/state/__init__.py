"""The window store: slot arithmetic, the store protocol and its Redis and memory backends."""
