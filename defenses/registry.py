"""The defense registry. Each registered object is a Defense class (see ``defenses.base``).

A defense is registered in one place: the ``@DEFENSES.register("name")`` decorator on its class,
in a module of this package. The registry imports every module of the package on first lookup
(``modules`` lists them, read from the package's folder), so adding a defense is adding its file:
no list here or in the tests names it.
"""

import pkgutil
from pathlib import Path

from harness.core.registry import Registry

DEFENSES = Registry(
    "defenses",
    modules=sorted(
        f"defenses.{m.name}"
        for m in pkgutil.iter_modules([str(Path(__file__).resolve().parent)])
        if m.name != "registry"
    ),
)
