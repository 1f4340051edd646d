"""A compiled model on a chip: the :class:`~cimstack.runtime.deployment.Deployment` and
``compile`` (:mod:`.deployment`), its programming, repair and refresh (:mod:`.programming`,
with the spare-line primitives in :mod:`.repair`), running it on a backend (:mod:`.session`),
per-layer settings (:mod:`.settings`), and saving it to a file (:mod:`.fileformat` writes,
:mod:`.saved` loads)."""
