"""The Python reference joins: the specification the native joins are tested against."""
