"""The adaptive stage: the remedy of every sanity check that fails or warns, run after the suite
(``stage``), with the remedies themselves (``remedies``, registered in ``attacks.registry.REMEDIES``),
the culprit search behind BPDA (``probe``) and its differentiable view of a model (``view``)."""
