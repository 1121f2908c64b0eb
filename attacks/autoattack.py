"""AutoAttack through the reference implementation (package ``pyautoattack``, the code of
fra31/auto-attack), never a re-implementation.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. Versions:

- ``standard``: APGD-CE (100 iterations, 1 restart), APGD-T (targeted DLR, 9 targets x 100
  iterations), FAB-T (9 targets x 100 iterations), Square (5000 queries);
- ``plus``: APGD-CE and APGD-DLR (5 restarts), FAB (5 restarts), Square, APGD-T, FAB-T;
- ``rand``: APGD-CE and APGD-DLR with expectation over transformation (20 samples), for
  randomised models;
- ``custom``: any list of those components.

Each component is one entry of the harness cascade: it runs ``AutoAttack.run_standard_evaluation``
with that component alone, configured exactly as the chosen version configures it, on the points
still robust, in index order and in batches of ``batch_size``. Because every component seeds
itself from the same seed and AutoAttack batches the same way, the cascade of a whole version
gives the same per-example result as calling ``pyautoattack`` directly on the same points with
the same seed (tested). Running one component per call is what lets the harness record each
component's own contribution and resume an interrupted evaluation after the last finished
component. (pyautoattack 0.2.0's own ``EvaluationState`` file cannot be restored: it writes the
attack set as a string, and its restore branch leaves ``y_adv`` unset; so the harness keeps its
own state at component granularity.)

Descriptors are read from the configured pyautoattack objects, not assumed. AutoAttack runs in
fp32 on the model as given; the model is in eval mode during the attack and its mode is restored.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from attacks.base import AttackResult, UnderThreat, eval_mode
from attacks.registry import ATTACKS
from harness.core.errors import ConfigError
from harness.core.threat import ThreatModel

VERSIONS = ("standard", "plus", "rand")
COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
_LABELS = {
    "apgd-ce": "APGD-CE",
    "apgd-t": "APGD-T",
    "fab-t": "FAB-T",
    "square": "Square",
    "apgd-dlr": "APGD-DLR",
    "fab": "FAB",
}


def _pyautoattack():
    try:
        import pyautoattack
    except ImportError:  # pragma: no cover - it is a hard dependency
        raise ConfigError("AutoAttack needs the package pyautoattack (pip install pyautoattack)") from None
    return pyautoattack


def version_components(version: str, norm: str) -> List[str]:
    """The components AutoAttack runs for ``version``, in its own order."""
    if version not in VERSIONS:
        raise ConfigError(
            f"unknown AutoAttack version {version!r}; use one of {', '.join(VERSIONS)} or a list of components"
        )
    aa = _pyautoattack().AutoAttack(nn.Identity(), norm=norm, eps=0.1, version=version, seed=0, device="cpu")
    return list(aa.attacks_to_run)


class AutoAttackComponent(UnderThreat):
    """One AutoAttack component (``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``, ``apgd-dlr``,
    ``fab``) from the reference ``pyautoattack`` package, configured as AutoAttack's ``version``
    configures it. Runs on all points it is given, batching internally like AutoAttack."""

    batches_internally = True

    def __init__(
        self,
        threat: ThreatModel,
        *,
        component: str,
        version: str = "standard",
        seed: int = 0,
        num_classes: Optional[int] = None,
        batch_size: int = 500,
        **unknown: Any,
    ):
        if unknown:
            raise ConfigError(f"autoattack: unknown options {', '.join(sorted(unknown))}")
        if component not in COMPONENTS:
            raise ConfigError(f"unknown AutoAttack component {component!r}; use one of {', '.join(COMPONENTS)}")
        self.threat = threat
        self.component, self.version, self.seed = component, version, int(seed)
        self.num_classes, self.batch_size = num_classes, int(batch_size)
        self.name = component
        self._aa = self._configure(nn.Identity())

    def _configure(self, model: nn.Module):
        pa = _pyautoattack()
        if self.version in VERSIONS:
            aa = pa.AutoAttack(model, norm=self.norm, eps=self.eps, version=self.version, seed=self.seed, device="cpu")
            if self.component not in aa.attacks_to_run:
                raise ConfigError(
                    f"AutoAttack {self.version} has no component {self.component!r} "
                    f"(it runs {', '.join(aa.attacks_to_run)})"
                )
        else:  # AutoAttack's own defaults for a custom list
            aa = pa.AutoAttack(
                model,
                norm=self.norm,
                eps=self.eps,
                version="custom",
                attacks=[self.component],
                seed=self.seed,
                device="cpu",
            )
        if self.num_classes is not None and self.num_classes < 3 and self.component in ("apgd-dlr", "apgd-t", "fab-t"):
            raise ConfigError(
                f"AutoAttack {self.component} needs at least 3 classes (DLR loss); the data set has {self.num_classes}"
            )
        if self.num_classes is not None and self.component in ("apgd-t", "fab-t"):
            # AutoAttack's check D6: targets + 1 <= classes; fewer classes means fewer targets
            k = min(aa.apgd_targeted.n_target_classes, self.num_classes - 1)
            aa.apgd_targeted.n_target_classes = k
            aa.fab.n_target_classes = k
        aa.attacks_to_run = [self.component]
        return aa

    def describe(self) -> Dict[str, Any]:
        pa = _pyautoattack()
        aa = self._aa
        d: Dict[str, Any] = {
            "attack": self.component,
            "norm": self.norm,
            "eps": self.threat.eps_text,
            "eps_value": self.eps,
            "autoattack_version": self.version,
            "seed": self.seed,
            "library": "pyautoattack",
            "version": getattr(pa, "__version__", "unknown"),
            "model_mode": "eval",
            "precision": "fp32",
        }
        if self.component in ("apgd-ce", "apgd-dlr"):
            a = aa.apgd
            d.update(
                steps=a.n_iter,
                restarts=a.n_restarts,
                loss=self.component.split("-")[1],
                targets="untargeted",
                step_size="adaptive (2 eps initial)",
                eot_iter=a.eot_iter,
                rho=a.thr_decr,
                random_start=True,
            )
        elif self.component == "apgd-t":
            a = aa.apgd_targeted
            d.update(
                steps=a.n_iter,
                restarts=a.n_restarts,
                loss="dlr-targeted",
                targets=a.n_target_classes,
                step_size="adaptive (2 eps initial)",
                eot_iter=a.eot_iter,
                random_start=True,
            )
        elif self.component in ("fab", "fab-t"):
            f = aa.fab
            d.update(
                steps=f.n_iter,
                restarts=1 if self.component == "fab-t" else f.n_restarts,
                loss="minimal distance",
                targets=f.n_target_classes if self.component == "fab-t" else "untargeted",
                random_start=True,
            )
        elif self.component == "square":
            s = aa.square
            d.update(
                queries=s.n_queries,
                restarts=s.n_restarts,
                p_init=s.p_init,
                loss="margin",
                targets="untargeted",
                steps=s.n_queries,
                random_start=True,
            )
        return d

    def label(self) -> str:
        d = self.describe()
        extra = {
            "apgd-ce": f"{d.get('steps')} it",
            "apgd-dlr": f"{d.get('steps')} it",
            "apgd-t": f"{d.get('targets')} targets",
            "fab-t": f"{d.get('targets')} targets",
            "fab": f"{d.get('restarts')} restarts",
            "square": f"{d.get('queries')} queries",
        }[self.component]
        eot = f", EOT {d['eot_iter']}" if d.get("eot_iter", 1) and d.get("eot_iter", 1) > 1 else ""
        return f"AutoAttack {self.version}: {_LABELS[self.component]} ({extra}{eot})"

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: Any = None) -> AttackResult:
        """Run the component on every point given (points the caller still counts as robust)."""
        if x.shape[0] == 0:
            return AttackResult(x_adv=x.clone(), success=torch.zeros(0, dtype=torch.bool, device=x.device))
        aa = self._configure(model)
        aa.device = x.device
        for sub in (aa.apgd, aa.apgd_targeted, aa.fab, aa.square):
            sub.device = x.device
        with eval_mode(model):
            x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=self.batch_size)
        x_adv = x_adv.detach().to(x.device)
        success = y_adv.to(y.device) != y
        return AttackResult(x_adv=x_adv, success=success, adv_pred=y_adv.to(y.device))


def expand_autoattack(spec: Dict[str, Any], norm: str) -> List[Dict[str, Any]]:
    """``{"attack": "autoattack", "version": "standard"}`` -> one spec per component, in
    AutoAttack's order. ``version`` may also be a list of components (AutoAttack's custom)."""
    spec = dict(spec)
    spec.pop("attack")
    version = spec.pop("version", "standard")
    if isinstance(version, (list, tuple)):
        comps, v = list(version), "custom"
    else:
        comps, v = version_components(version, norm), version
    return [{"attack": c, "version": v, **spec} for c in comps]


def _component_factory(component: str):
    def make(threat: ThreatModel, **kw: Any) -> AutoAttackComponent:
        return AutoAttackComponent(threat, component=component, **kw)

    make.__doc__ = f"AutoAttack {_LABELS[component]} from pyautoattack (the reference code)"
    return make


for _c in COMPONENTS:
    ATTACKS.add(
        _c,
        _component_factory(_c),
        summary=f"AutoAttack's {_LABELS[_c]}, from pyautoattack (reference implementation)",
        needs=("num_classes", "batch_size"),
    )


def _autoattack(threat: ThreatModel, **kw: Any):  # pragma: no cover - expanded by the suite resolver
    raise ConfigError(
        "'autoattack' expands into its components inside a suite; use a suite, or one component such as apgd-ce"
    )


def _label(spec: Dict[str, Any]) -> str:
    v = spec.get("version", "standard")
    return f"AutoAttack {v if isinstance(v, str) else '+'.join(v)}"


ATTACKS.add(
    "autoattack",
    _autoattack,
    summary="AutoAttack (pyautoattack): version standard | plus | rand | list of components; expands into components",
    expand=expand_autoattack,
    label=_label,
)
