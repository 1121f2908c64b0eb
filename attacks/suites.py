"""Named evaluation suites: plain data, listing attacks with their full budgets and the sample
size n (the first n test examples, in fixed order).

Attacks run as a cascade, each only on points still robust; the suite's robust accuracy is
the per-example worst case over all of them (Carlini et al. 2019, C14; AutoAttack's rule).
AutoAttack comes first where it is used, so the accuracy after its components is the standard
AutoAttack number, comparable with published ones; the PGD runs after it can only lower the
worst case. ``checks`` names the sanity-check set run with the suite (``attacks.checks``):
``"all"``, ``"cheap"`` or a list, minus ``exclude``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from attacks.registry import ATTACKS, SUITES
from harness.core.errors import ConfigError

SUITES.add(
    "smoke",
    {
        "n": 64,
        "attacks": [
            {"attack": "fgsm"},
            {"attack": "pgd", "steps": 20, "step_size": "eps/4", "restarts": 1, "loss": "ce"},
        ],
        "checks": "cheap",
    },
    summary="for tests: FGSM, PGD-20; n=64; cheap checks (seconds)",
)

SUITES.add(
    "quick",
    {
        "n": 500,
        "attacks": [
            {"attack": "autoattack", "version": "standard"},
            {"attack": "pgd", "steps": 20, "step_size": "eps/4", "restarts": 1, "loss": "ce"},
        ],
        "checks": "cheap",
    },
    summary="AutoAttack standard, then PGD-20 CE; n=500; cheap checks and square-vs-whitebox from AutoAttack's own "
    "Square (minutes on a CPU for a small CNN)",
)

SUITES.add(
    "standard",
    {
        "n": 1000,
        "attacks": [
            {"attack": "autoattack", "version": "standard"},
            {"attack": "pgd", "steps": 100, "step_size": "2.5*eps/steps", "restarts": 5, "loss": "ce"},
            {"attack": "pgd", "steps": 100, "step_size": "2.5*eps/steps", "restarts": 5, "loss": "margin"},
        ],
        "checks": "all",
    },
    summary="AutoAttack standard, PGD-100 x5 restarts on CE and on the margin loss; n=1000; all checks",
)

SUITES.add(
    "rand",
    {
        "n": 1000,
        "attacks": [
            {"attack": "autoattack", "version": "rand"},
        ],
        "checks": "all",
        "exclude": ["randomness"],
    },
    summary="for randomised models: AutoAttack rand (APGD-CE, APGD-DLR with EOT 20); n=1000; all checks but randomness",
)


SUITES.add(
    "autoattack",
    {
        "n": 1000,
        "attacks": [{"attack": "autoattack", "version": "standard"}],
        "checks": "cheap",
    },
    summary="AutoAttack standard alone (the number papers since 2020 report); n=1000; cheap checks",
)

# -- the papers' own evaluations, so a reproduction is measured under the paper's attack and n --------
# Each replays the released evaluation code of one paper (cited in the summary); step sizes are
# written relative to eps where the paper's step is a fixed fraction of its eps, so the same suite
# applies at another data set's eps. No sanity checks: these suites measure the paper's number;
# the checks run with the AutoAttack suite of the same checkpoint.


def _paper(name: str, n: int, attack: Dict[str, Any], summary: str) -> None:
    SUITES.add(
        name,
        {"n": n, "attacks": [{"attack": "pgd", "loss": "ce", **attack}], "checks": [], "paper": summary},
        summary=summary,
    )


_paper(
    "paper-fast-at-cifar10",
    10_000,
    {"steps": 50, "restarts": 10, "step_size": "eps/4"},
    "Wong et al. 2020 CIFAR-10: PGD-50, 10 restarts, step 2/255 at 8/255 (locuslab/fast_adversarial@54f7287 "
    "CIFAR10/train_fgsm.py:L157, utils.py:L88-90); full test set",
)
_paper(
    "paper-fast-at-mnist",
    10_000,
    {"steps": 50, "restarts": 10, "step_size": "eps/30"},
    "Wong et al. 2020 MNIST: PGD-50, 10 restarts, step 0.01 at 0.3 (locuslab/fast_adversarial@54f7287 "
    "MNIST/evaluate_mnist.py:L69-71); full test set",
)
_paper(
    "paper-trades-cifar10",
    10_000,
    {"steps": 20, "restarts": 1, "step_size": 0.003},
    "Zhang et al. 2019 CIFAR-10: PGD-20 ('FGSM-20'), step 0.003, random start (yaodongyu/TRADES@6e8e11b "
    "pgd_attack_cifar10.py:L20-28); full test set",
)
_paper(
    "paper-trades-mnist",
    10_000,
    {"steps": 40, "restarts": 1, "step_size": "eps/30"},
    "Zhang et al. 2019 MNIST: PGD-40 ('FGSM-40'), step 0.01 at 0.3, random start (yaodongyu/TRADES@6e8e11b "
    "pgd_attack_mnist.py:L20-28); full test set",
)
_paper(
    "paper-madry-cifar10",
    10_000,
    {"steps": 20, "restarts": 1, "step_size": "eps/4"},
    "Madry et al. 2018 CIFAR-10: 20-step PGD on the cross-entropy, step 2/255 (MadryLab/cifar10_challenge@f15682d "
    "README.md:L42, config.json:L28); full test set",
)
_paper(
    "paper-madry-mnist",
    10_000,
    {"steps": 100, "restarts": 50, "step_size": "eps/30"},
    "Madry et al. 2018 MNIST: 100-step PGD on the cross-entropy, 50 random restarts, step 0.01 "
    "(MadryLab/mnist_challenge@3ee3643 "
    "README.md:L61, config.json:L21); full test set",
)
_paper(
    "paper-free-cifar10",
    10_000,
    {"steps": 20, "restarts": 10, "step_size": "eps/4"},
    "Shafahi et al. 2019 CIFAR-10: PGD-20, 10 restarts, step 2/255 (ashafahi/free_adv_train@c42cac2 README.md:L16, "
    "config.py:L29-30); full test set",
)
_paper(
    "paper-rice-cifar10",
    10_000,
    {"steps": 10, "restarts": 1, "step_size": "eps/4"},
    "Rice et al. 2020 CIFAR-10: PGD-10, step 2/255, 1 restart (locuslab/robust_overfitting@c47a25c "
    "train_cifar.py:L140-142, "
    "L366); full test set",
)
_paper(
    "paper-mmr-fmnist",
    1_000,
    {"steps": 40, "restarts": 1, "step_size": "2*eps/steps"},
    "Croce et al. 2019 (MMR) Fashion-MNIST: PGD-40, step 2*eps/40, random start "
    "(max-andr/provable-robustness-max-linear-regions"
    "@28200b6 attacks.py:L55-72), first 1,000 test points as Table 1 (the paper adds a MIP lower bound, not run "
    "here)",
)


@dataclass(frozen=True)
class Suite:
    """A resolved evaluation suite: its name, the sample size n (the first n test points, in fixed
    order), the attacks of the cascade in order (attack specs for ``attacks.factory.build``), the
    sanity checks (``"all"``, ``"cheap"`` or a list, minus ``exclude``) and, for the papers' own
    suites, the evaluation they replay (``paper``).

    ``Suite.resolve`` takes a registered name or an inline spec (a dict, as a config file or the
    API gives it) and validates it; ``record()`` is what an eval result stores as ``suite_spec``,
    the spec as declared (so a stored result compares equal to the suite that produced it)."""

    name: str
    n: int
    attacks: Tuple[Mapping[str, Any], ...]
    checks: Any = ()
    exclude: Tuple[str, ...] = ()
    paper: Optional[str] = None
    declared: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def resolve(cls, name_or_spec: Any) -> "Suite":
        """A suite by name, an inline suite dict (validated the same way), or a Suite (itself)."""
        if isinstance(name_or_spec, Suite):
            return name_or_spec
        if isinstance(name_or_spec, Mapping):
            spec = copy.deepcopy(dict(name_or_spec))
            name = spec.get("name", "custom")
        else:
            name = str(name_or_spec)
            spec = copy.deepcopy(SUITES.get(name))
        spec.pop("name", None)
        if not isinstance(spec.get("attacks"), list) or not spec["attacks"]:
            raise ConfigError(f"suite {name!r} lists no attacks")
        n = spec.get("n")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"suite {name!r}: n must be a positive integer, got {n!r}")
        for a in spec["attacks"]:
            if not isinstance(a, dict) or "attack" not in a:
                raise ConfigError(f"suite {name!r}: each attack must be a table with an 'attack' name, got {a!r}")
            ATTACKS.entry(a["attack"])  # unknown name -> did-you-mean
        checks = spec.get("checks") or []
        return cls(
            name=str(name),
            n=n,
            attacks=tuple(spec["attacks"]),
            checks=checks if isinstance(checks, str) else tuple(checks),
            exclude=tuple(spec.get("exclude") or ()),
            paper=spec.get("paper"),
            declared=spec,
        )

    def record(self) -> Dict[str, Any]:
        """The spec as declared, without its name: an eval result's ``suite_spec``."""
        return copy.deepcopy(dict(self.declared))

    def with_n(self, n: int) -> "Suite":
        """The same attacks and checks on another number of points."""
        return replace(self, n=int(n), declared={**copy.deepcopy(dict(self.declared)), "n": int(n)})

    def expand(self, norm: str) -> List[Dict[str, Any]]:
        """The attack specs with composite attacks (``autoattack``) expanded into their components."""
        out: List[Dict[str, Any]] = []
        for a in self.attacks:
            entry = ATTACKS.entry(a["attack"])
            expand = entry.meta.get("expand")
            out.extend(expand(dict(a), norm) if expand else [dict(a)])
        return out

    def attack_names(self, build: Callable[[Mapping[str, Any]], Any]) -> str:
        """The suite's attacks as people name them (``AutoAttack standard; PGD-20 CE``): each
        attack's own ``label()`` (``build`` turns a spec into the attack), a composite's ``label``
        meta."""
        parts = []
        for spec in self.attacks:
            entry = ATTACKS.entry(spec["attack"])
            named = entry.meta.get("label")
            parts.append(named(dict(spec)) if named else build(spec).label())
        return "; ".join(parts)
