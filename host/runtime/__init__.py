"""A compiled model on a chip: the :class:`Deployment`, its programming, repair and refresh,
running it on a backend, per-layer settings, and saving it to a file."""
