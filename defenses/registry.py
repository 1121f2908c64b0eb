"""The defense registry. Each registered object is a Defense class (see ``defenses.base``)."""

from harness.core.registry import Registry

DEFENSES = Registry(
    "defenses",
    modules=[
        "defenses.erm",
        "defenses.pgd_at",
        "defenses.trades",
        "defenses.free_at",
        "defenses.fast_at",
        "defenses.mart",
        "defenses.pgd_at_awp",
        "defenses.trades_awp",
        "defenses.n_fgsm",
        "defenses.gradalign",
    ],
)
