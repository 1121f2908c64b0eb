"""``results.json``: the machine-readable summary of a run's report (schema "results"), written
beside report.md and report.html. Accuracies are fractions.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from reports.cells import (
    NOT_EVALUATED,
    headline_sentence,
)
from reports.cost import erm_multiplier
from reports.load import EvalView, RunInfo, stored
from reports.strength import strength_table


def _eval_json(ev: EvalView) -> Dict[str, Any]:
    return {
        "suite": ev.suite,
        "checkpoint": ev.checkpoint,
        "checkpoint_epoch": ev.epoch,
        "threat": {"norm": ev.norm, "eps": ev.eps_text, "eps_value": ev.eps_value},
        "split": ev.split,
        "n": ev.n,
        "suite_description": ev.suite_description(),
        "clean": stored(ev.result, "clean"),
        "robust": ev.robust.to_json() if ev.robust else None,
        "attacks": [
            {k: stored(a, k) for k in ("name", "label", "descriptor", "ran_on", "broke", "after")} for a in ev.attacks
        ],
        "verdict": ev.verdict,
        "reasons": ev.reasons,
        "checks": [{k: stored(f, k) for k in ("check", "status", "message")} for f in ev.findings],
        "cost": stored(ev.result, "cost"),
    }


# size: the results schema written out field by field (readers find each field where the schema says)
def results_doc(info: RunInfo, erm: Optional[RunInfo] = None) -> Dict[str, Any]:
    """The machine-readable summary (schema "results"); accuracies are fractions."""
    head = info.headline_eval()
    if head is not None:
        headline = {
            "evaluated": True,
            "sentence": headline_sentence(head),
            "suite": head.suite,
            "checkpoint": head.checkpoint,
            "checkpoint_epoch": head.epoch,
            "norm": head.norm,
            "eps": head.eps_text,
            "eps_value": head.eps_value,
            "n": head.n,
            "robust": head.robust.to_json() if head.robust else None,
            "clean": stored(head.result, "clean"),
            "verdict": head.verdict,
            "reasons": head.reasons,
        }
    else:
        headline = {
            "evaluated": False,
            "sentence": "Not evaluated: no finished evaluation result.",
            "verdict": NOT_EVALUATED,
        }
    st, _ = strength_table(info)
    wall, source = info.train_wall_s()
    co, co_epoch, co_detail = info.catastrophic_overfitting
    gap, flagged, thr = info.robust_overfitting
    return {
        "run": {
            "name": info.name,
            "defense": info.defense,
            "dataset": info.dataset,
            "model": info.model,
            "seed": info.seed,
            "threat": {"norm": info.norm, "eps": info.eps_text, "eps_value": info.eps_value},
            "status": info.status,
        },
        "headline": headline,
        "evaluations": [_eval_json(e) for e in info.evaluations()],
        "training": {
            "finished": info.training_finished,
            "epochs_planned": info.epochs_planned,
            "epochs_run": info.epochs_run,
            "best_epoch": info.best_epoch,
            "last_epoch": info.last_epoch,
            "stopped_early": info.summary.stopped_early,
            "stop_reason": info.summary.stop_reason,
            "catastrophic_overfitting": {"detected": co, "epoch": co_epoch, "detail": co_detail},
            "robust_overfitting": {"gap": gap, "flagged": flagged, "threshold": thr},
            "train_attack": {"label": info.train_attack[0], "descriptor": info.train_attack[1]},
            "selection_attack": {"label": info.selection_attack[0], "descriptor": info.selection_attack[1]},
        },
        "strength": [{c.key: r.cells.get(c.key) for c in st.columns} for r in st.groups[0].rows],
        "cost": {
            "train_wall_s": wall,
            "train_wall_source": source,
            "monitor_wall_s": info.monitor_wall_s(),
            "passes_per_example_per_epoch": list(info.passes_per_epoch()) if info.passes_per_epoch() else None,
            "passes_per_example_total": info.passes_total(),
            "eval_wall_s": {f"{e.suite}--{e.checkpoint}": e.cost_wall_s() for e in info.evaluations()},
            "erm_multiplier": erm_multiplier(info, erm),
        },
        "provenance": {
            "config": info.config,
            "env": info.env.to_json(),
            "seed": info.seed,
            "device": info.device,
            "git_sha": info.env.git_sha,
        },
        "problems": info.problems,
    }
