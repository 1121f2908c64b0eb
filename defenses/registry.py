"""The defense registry. Each registered object is a Defense class (see ``defenses.base``).

A defense is registered in one place: the ``@DEFENSES.register("name")`` decorator on its class,
in a module of this package. The registry imports every module of the package on first lookup
(``modules`` lists them, read from the package's folder), so adding a defense is adding its file:
no list here or in the tests names it.
"""

from pathlib import Path

from harness.core.registry import Registry, package_modules

DEFENSES = Registry(
    "defenses", modules=package_modules("defenses", Path(__file__).resolve().parent, skip=("defenses.registry",))
)
