"""One audit, in order: ``load`` (claim, data, model as data), ``guard`` (the guard rails of
``harness.audit.guards``: refusals and warnings), ``evaluate`` (the suite, its sanity checks and
the adaptive stage), ``replay`` (the claimed attack), then ``document`` (the verdict of
``harness.audit.verdict`` and the record). ``run_audit`` runs it in this process; ``harness audit``
runs it in a child process (``harness.audit.process``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from harness import distributed
from harness.audit.claim import check_claim_attack, compare_strength, parse_claim, replay_spec
from harness.audit.guards import GUARD_SAMPLE, AuditRefused, guard_rails
from harness.audit.model_files import load_audit_model
from harness.audit.verdict import decide
from harness.core.documents import AuditResult, EnvRecord, EvalData, EvalResult, Proportion, Threat
from harness.core.rundir import now_iso
from harness.core.runtime import environment, select_device, set_threads
from harness.core.threat import ThreatModel
from harness.data import load_dataset
from harness.evaluation import SURROGATE_POINTS, evaluate_model
from harness.hints import hints_for
from harness.robustbench_compat import zoo_files
from harness.spec import EvalSetting

log = logging.getLogger("harness.audit.session")


@dataclass
class AuditRequest:
    """What a reviewer asks: the model (exactly one of ``model`` / ``robustbench``), its
    checkpoint, the threat model and the claim, and how to evaluate (suite, n, seed, device)."""

    dataset: str
    eps: str
    claim: Any
    model: Optional[str] = None
    robustbench: Optional[str] = None
    checkpoint: Optional[str] = None
    model_dir: Optional[str] = None
    norm: str = "Linf"
    claim_attack: Optional[str] = None
    suite: str = "standard"
    n: Optional[int] = None
    batch_size: int = 500
    data_dir: Optional[str] = None
    device: str = "auto"
    seed: int = 0
    normalize: Optional[str] = None
    adaptive: Any = "auto"
    bpda: Sequence[str] = ()
    eot: Optional[int] = None
    input_range: Optional[str] = None  # "01": overrule the input-scale guard rails


class _Audit:
    """One audit, in the order of the module docstring: ``load`` (claim, data, model as data),
    ``guard`` (refusals and warnings), ``evaluate`` (suite and checks), ``replay`` (the claimed
    attack), then ``document`` (the verdict and the record)."""

    def __init__(self, req: AuditRequest, *, state_path: Optional[Path], progress: bool):
        self.req, self.state_path, self.progress = req, state_path, progress
        self.t0 = time.perf_counter()
        self.claim = parse_claim(req.claim)
        self.threat = ThreatModel.parse(req.norm, req.eps)
        self.parsed = check_claim_attack(req.claim_attack)
        replay_spec(self.parsed, self.threat.eps)  # an impossible budget fails now, not after the suite
        if distributed.world().distributed:  # under torchrun: each process its share of the cores
            set_threads(distributed.default_threads())
        self.device = distributed.place(select_device(req.device))

    def load(self) -> None:
        req = self.req
        if req.robustbench is not None:  # fail on a wrong name or a missing file before loading any data
            zoo_files(
                req.robustbench,
                dataset=req.dataset,
                threat=self.threat.norm,
                model_dir=req.model_dir or "models",
                checkpoint=req.checkpoint,
            )
        self.bundle = load_dataset(req.dataset, data_dir=req.data_dir, val_size=0, device=self.device)
        net, self.model_info = load_audit_model(
            model=req.model,
            robustbench=req.robustbench,
            checkpoint=req.checkpoint,
            model_dir=req.model_dir,
            bundle=self.bundle,
            norm=self.threat.norm,
            normalize=req.normalize,
        )
        self.net = net.to(self.device)
        self.hints = hints_for(self.net, list(req.bpda or []), req.eot)  # a module path the model lacks fails now
        self.setting = EvalSetting(
            req.suite, self.threat, self.bundle.num_classes, seed=req.seed, batch_size=req.batch_size
        )

    def guard(self) -> None:
        gx, gy = self.bundle.test.first(min(GUARD_SAMPLE, len(self.bundle.test)))
        self.guard_sample = int(gx.shape[0])
        self.guards = guard_rails(
            self.net,
            gx,
            gy,
            mean=self.bundle.mean,
            std=self.bundle.std,
            num_classes=self.bundle.num_classes,
            batch_size=self.req.batch_size,
            threat=self.threat,
            input_range=self.req.input_range,
        )
        for g in self.guards:
            if g.status == "warn":
                log.warning("guard rail %s: %s", g.check, g.message)
        refusals = [g for g in self.guards if g.status == "fail"]
        if refusals:
            raise AuditRefused("; ".join(g.message for g in refusals))

    def evaluate(self) -> None:
        req, bundle = self.req, self.bundle
        n_eval = req.n or self.setting.suite.n
        if n_eval > len(bundle.test):
            log.warning(
                "n=%d exceeds the %s test split (%d); using all %d",
                n_eval,
                req.dataset,
                len(bundle.test),
                len(bundle.test),
            )
            n_eval = len(bundle.test)
        self.x, self.y = bundle.test.first(n_eval)
        info = self.model_info
        weights = [f.get("sha256") for f in info.get("files", [])] or (info.get("checkpoint") or {}).get("sha256")
        result = evaluate_model(
            self.net,
            self.x,
            self.y,
            self.setting,
            state_path=self.state_path,
            state_key=["audit", [info.get("file_sha256"), info.get("name"), req.normalize, weights]],
            progress=self.progress,
            surrogate_data=bundle.train.first(min(len(bundle.train), SURROGATE_POINTS)),
            adaptive=req.adaptive,
            hints=self.hints,
        )
        result.data = EvalData(req.dataset, "test", n_eval, "first n in fixed order", source=bundle.source)
        result.per_example.index = list(range(n_eval))
        self.result = result

    def replay(self) -> Optional[Dict[str, Any]]:
        """The claimed attack, as far as its text says, on the same points (standalone, not in the
        cascade); the measured worst case then covers it too. Returns its record for the strength
        comparison (None when the text says too little to replay)."""
        self.robust_all = torch.tensor(self.result.per_example.robust, dtype=torch.bool)
        spec = replay_spec(self.parsed, self.threat.eps)
        if spec is None:
            return None
        n = int(self.x.shape[0])
        setting = EvalSetting(
            {"name": "claimed-attack", "n": n, "attacks": [dict(spec)], "checks": []},
            self.threat,
            self.bundle.num_classes,
            seed=self.req.seed,
            batch_size=self.req.batch_size,
            adaptive="off",
        )
        r = evaluate_model(self.net, self.x, self.y, setting, progress=self.progress, run_checks=False, adaptive="off")
        rrob = torch.tensor(r.per_example.robust, dtype=torch.bool)
        only = int((self.robust_all & ~rrob).sum())
        first = r.attacks[0]
        replay: Dict[str, Any] = {
            "label": first.label,
            "descriptor": first.descriptor,
            "robust": r.robust.to_json(),
            "passes": first.passes.to_json(),
            "wall_s": r.cost.wall_s,
            "broke_points_suite_missed": only,
            "assumed": [],
            "per_example_robust": rrob.tolist(),
        }
        if spec["attack"] == "pgd" and not isinstance(spec["step_size"], float):
            replay["assumed"].append("step size not stated (or not in pixel units); used 2.5*eps/steps (Madry et al.)")
        self.robust_all &= rrob
        return replay

    # size: the audit record, field by field, with the flags gathered for the verdict
    def document(self, replay: Optional[Dict[str, Any]]) -> AuditResult:
        result, req, suite_name = self.result, self.req, self.setting.suite_name
        n_eval = int(self.x.shape[0])
        replayed = " and the replayed claimed attack" if replay else ""
        measured = Proportion.of(int(self.robust_all.sum()), n_eval, label=f"{result.robust.label}{replayed}")
        strength = compare_strength(self.parsed, result, replay)
        flags = [f"guard rail {g.check}: {g.message}" for g in self.guards if g.status == "warn"]
        if strength.suite_stronger is False:
            advice = (
                "use a suite that runs it"
                if self.parsed.family == "autoattack" and suite_name == "standard"
                else "use --suite standard"
            )
            flags.append(f"the suite is not stronger than the claimed attack ({strength.comparison}); {advice}")
        elif strength.suite_stronger is None:
            flags.append(f"the claimed attack's strength was not compared: {strength.comparison}")
        if replay is not None and replay["broke_points_suite_missed"]:
            flags.append(
                f"the replayed claimed attack broke {replay['broke_points_suite_missed']} point(s) the suite did not"
            )
        stage = result.adaptive
        stands = [f"{f.check}: {f.text}" for f in (stage.flags if stage else []) if f.outcome == "stands"]
        flags += [f"a flag stands ({s})" for s in stands]
        notes = []
        if result.checks.verdict == "not run":
            notes.append(
                "sanity checks did not run (" + "; ".join(result.checks.reasons) + "): gradient masking was not tested"
            )
        world = distributed.describe()
        return AuditResult(
            now_iso(),
            decide(
                self.claim,
                measured,
                result.checks,
                flags,
                final_verdict=stage.verdict if stage else None,
                final_reasons=stage.reasons if stage else None,
                decided_by=decided_by(result, replay),
            ),
            overrides={"input_range": req.input_range} if req.input_range else {},
            claim={
                "value": self.claim,
                "text": str(req.claim),
                "attack": self.parsed.to_json(),
                "threat": self.threat.to_dict(),
            },
            measured=measured,
            clean=result.clean,
            model=self.model_info,
            data=result.data,
            threat=Threat.of(self.threat),
            suite=result.suite,
            seed=req.seed,
            guard_rails={"sample": self.guard_sample, "findings": [g.to_json() for g in self.guards]},
            strength=strength,
            notes=notes,
            eval=result,
            wall_s=time.perf_counter() - self.t0,
            env=EnvRecord.from_json({**environment(self.device), **({"distributed": world} if world else {})}),
        )


def run_audit(req: AuditRequest, *, state_path: Optional[Path] = None, progress: bool = True) -> AuditResult:
    """Audit a claim; returns the audit document. Raises ``HarnessError`` for anything that stops
    the audit (a refused checkpoint, a model expecting normalised input, ...). Writing it is
    ``harness.audit.run.write_audit``'s job."""
    audit = _Audit(req, state_path=state_path, progress=progress)
    audit.load()
    audit.guard()
    audit.evaluate()
    return audit.document(audit.replay())


def decided_by(result: EvalResult, replay: Optional[Mapping[str, Any]]) -> str:
    """What set the measurement: the remedy of the adaptive stage that broke the most points the
    suite had not (with the flag that called it), else the replayed claimed attack when it broke
    points the rest missed, else the suite, with the remedies that ran after it and found
    nothing more (they are what settled the flags: the suite's number stood up to them)."""
    stage = result.adaptive
    best: Dict[str, int] = {}
    why: Dict[str, str] = {}
    for r in stage.remedies if stage else []:
        if r.broke:
            best[str(r.remedy)] = best.get(str(r.remedy), 0) + int(r.broke)
            why.setdefault(str(r.remedy), "; ".join(r.why))
    if best:
        name = max(best, key=lambda k: best[k])
        return f"the adaptive remedy {name} (it broke {best[name]} point(s) the suite had not; called by {why[name]})"
    if replay is not None and replay.get("broke_points_suite_missed"):
        return "the replayed claimed attack"
    ran: List[str] = []
    for r in stage.remedies if stage else []:
        if not r.skipped and str(r.remedy) not in ran:
            ran.append(str(r.remedy))
    if not ran:
        return f"the {result.suite} suite"
    return (
        f"the {result.suite} suite, confirmed by the adaptive remedies {', '.join(ran)} (they broke no further point)"
    )
