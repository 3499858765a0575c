"""One module per model family; see :mod:`zoo.registry` for the names."""
