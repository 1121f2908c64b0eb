"""The audit report: ``audit.md`` and a self-contained ``audit.html`` from an audit document.

Built, like the per-run report, as one ``reports.table.Report`` and printed by the same
Markdown and HTML renderers (``reports.renderers``): one table model, one page style, inline CSS,
no scripts and no external links. A pure function of the audit.json document (docs/formats.md,
"audits/NAME-TIMESTAMP/audit.json"), so an audit can be re-rendered from its JSON alone, without
torch. Order, by design: the verdict on the claim, the numbers behind it, the claimed attack
beside the harness's, then the evidence (guard rails, sanity checks), notes and the rule.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

from harness.core.documents import EvalResult, Proportion
from reports import adaptive_section
from reports.numbers import pct, pct_ci
from reports.renderers import render_document
from reports.table import Bullets, Callout, Column, Heading, Para, Report, Span, Table, TableBlock, text

OUTCOME = {"holds": "CLAIM HOLDS", "overstated": "CLAIM OVERSTATED", "unreliable": "EVALUATION UNRELIABLE"}
# the callout colour of each outcome: green, red, amber
_TONE = {"holds": "reliable", "overstated": "unreliable", "unreliable": "suspicious"}


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}" if v >= 10 else f"{v:.2g}"
    return str(v)


def prop_text(prop: Any) -> str:
    """A proportion of the audit document (a dict) as ``87.5% [71.9, 95.0]``."""
    return pct_ci(Proportion.coerce(prop))


def title(doc: Mapping[str, Any]) -> str:
    v = doc["verdict"]
    return f"Audit: {OUTCOME[v['outcome']].lower()}" + (" (flagged)" if v["flagged"] else "")


def model_line(doc: Mapping[str, Any]) -> str:
    """Which model and weights were audited, with their hashes."""
    m = doc["model"]
    if m["kind"] == "robustbench":
        files = ", ".join(f"{f['path']} (sha256 {f['sha256'][:12]})" for f in m.get("files", []))
        return (
            f"RobustBench {m['name']} ({m['architecture']}, robustbench {m.get('robustbench_version')}), "
            f"weights {files}"
        )
    if m["kind"] == "file":
        what = f"{m['file']}:{m['factory']} (file sha256 {m['file_sha256'][:12]})"
    else:
        what = f"registered model {m['name']}"
    ck = m.get("checkpoint")
    w = (
        f"weights {ck['path']} (sha256 {ck['sha256'][:12]})"
        if ck
        else "no checkpoint (weights as the factory returned them)"
    )
    norm = m.get("normalize_added")
    added = (
        f"; Normalize added by the reviewer ({norm['source']}: mean {norm['mean']}, std {norm['std']})" if norm else ""
    )
    return f"{what}, {w}{added}"


def _text_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """A table of text cells (the audit's numbers are already labelled sentences)."""
    cols = [Column(f"c{i}", c) for i, c in enumerate(columns)]
    return Table.simple("", cols, [{f"c{i}": "-" if v is None else str(v) for i, v in enumerate(r)} for r in rows])


def _summary_table(doc: Mapping[str, Any]) -> Table:
    v, t, data = doc["verdict"], doc["threat"], doc["data"]
    attack = doc["claim"]["attack"].get("text") or "attack not given"
    rows = [
        ("claimed robust accuracy", f"{pct(v['claim'])} ({attack})"),
        ("measured robust accuracy", prop_text(doc["measured"])),
        ("difference (claimed - measured)", f"{v['gap_points']:+.1f} points"),
        ("clean accuracy", prop_text(doc["clean"])),
        ("sanity checks", v["checks_verdict"]),
        ("threat model", f"{t['norm']} eps={t['eps']} ({t['eps_value']:.6g} in [0,1] pixel units)"),
        ("data", f"{data['dataset']} test split, first {data['n']} points in fixed order ({data.get('source', '')})"),
        ("suite", f"{doc['suite']}, seed {doc['seed']}"),
        ("model", model_line(doc)),
    ]
    return _text_table(["What", "Value"], rows)


def _strength_table(doc: Mapping[str, Any]) -> Table:
    head = [
        "Attack",
        "Steps",
        "Restarts",
        "Loss",
        "Targets / queries",
        "Gradient steps per point",
        "Passes per attacked point (fwd / bwd)",
        "Robust accuracy",
    ]
    rows: List[List[Any]] = []
    c = doc["strength"]["claimed"]
    rep = c.get("replayed")
    claimed = pct(doc["claim"]["value"])
    passes = rep["passes"] if rep else {}
    per_attacked = f"{_num(passes.get('forward_per_attacked'))} / {_num(passes.get('backward_per_attacked'))}"
    rows.append(
        [
            f"claimed: {c.get('text') or '(not given)'}",
            _num(c.get("steps")),
            _num(c.get("restarts")),
            c.get("loss") or "-",
            "-",
            _num(c.get("gradient_steps_per_example")),
            per_attacked if rep else "-",
            f"{claimed} claimed; {prop_text(rep['robust'])} as replayed here ({rep['label']})"
            if rep
            else f"{claimed} claimed (not replayed)",
        ]
    )
    for r in doc["strength"]["harness"]:
        tq = r["queries"] if r.get("queries") is not None else r.get("targets")
        per_attacked = f"{_num(r['forward_per_attacked'])} / {_num(r['backward_per_attacked'])}"
        rows.append(
            [
                f"harness: {r['label']}",
                _num(r["steps"]),
                _num(r["restarts"]),
                r.get("loss") or "-",
                _num(tq),
                _num(r["gradient_steps"]),
                per_attacked,
                f"{pct(r['accuracy_after'])} after it (cumulative, ran on {r['ran_on']})",
            ]
        )
    return _text_table(head, rows)


# size: the audit report's sections top to bottom, as a reader meets them
def build_audit_report(doc: Mapping[str, Any]) -> Report:
    """The audit as a report document (render it with ``reports.renderers.render_document``)."""
    v = doc["verdict"]
    out = Report(title(doc))
    out.add(Callout(_TONE[v["outcome"]], [[("Verdict.", "b"), (f" {v['text']}.", "")]]))
    out.add(TableBlock(_summary_table(doc)))
    out.add(Para(text(f"Measured: {doc['measured']['label']}.")))
    if v["flags"]:
        out.add(Heading(2, "Flags", "flags"), Bullets([text(f) for f in v["flags"]]))
    if v["checks_reasons"] and v["checks_verdict"] in ("suspicious", "unreliable"):
        out.add(Heading(2, "Sanity-check reasons", "reasons"), Bullets([text(r) for r in v["checks_reasons"]]))

    strength = doc["strength"]
    out.add(Heading(2, "Attack strength: the claim's attack beside the harness's", "strength"))
    out.add(Para(text(f"{strength['comparison']}.")), TableBlock(_strength_table(doc)))
    rep = strength["claimed"].get("replayed")
    if rep:
        step = rep["descriptor"].get("step_size_expr") or rep["descriptor"].get("step_size")
        assumed = " ".join(rep.get("assumed", []))
        out.add(
            Para(
                text(
                    f"The claimed attack was replayed on the same points as {rep['label']} (step size {step})."
                    + (f" {assumed}" if assumed else "")
                )
            )
        )
    hc = strength["harness_cost"]
    out.add(
        Para(
            text(
                f"Harness evaluation cost: {hc['wall_s']:.1f} s, {hc['forward_per_example']:.0f} forward / "
                f"{hc['backward_per_example']:.0f} backward passes per example."
            )
        )
    )

    guards = doc["guard_rails"]
    out.add(
        Heading(2, "Guard rails", "guard-rails"),
        Para(text(f"On the first {guards['sample']} test points (forward passes only).")),
        TableBlock(
            _text_table(
                ["Rule", "Status", "Finding"],
                [(g.get("check") or g.get("rule"), g["status"], g["message"]) for g in guards["findings"]],
            )
        ),
    )
    result = EvalResult.coerce(doc["eval"])
    findings = result.checks.findings
    if findings:
        rows = [(f.check, f.status, f.message) for f in findings]
        out.add(Heading(2, "Sanity checks", "checks"), TableBlock(_text_table(["Check", "Status", "Finding"], rows)))
    if result.adaptive is not None:
        out.add(Heading(2, "Adaptive stage: what the flags became", "adaptive"))
        adaptive_section.add_to(out, result, "")
    if doc.get("notes"):
        out.add(Heading(2, "Notes", "notes"), Bullets([text(n) for n in doc["notes"]]))
    out.add(Heading(2, "Verdict rule", "rule"), Para(text(v["rule"] + ".")))
    env: Dict[str, Any] = doc.get("env", {})
    versions = env.get("versions", {})
    footer: List[Span] = [
        (
            f"harness {env.get('harness')} (git {env.get('git_sha')}), torch {versions.get('torch')}, "
            f"pyautoattack {versions.get('pyautoattack')}; {doc['created']}; "
            f"audit took {doc['wall_s']:.1f} s.",
            "i",
        )
    ]
    out.add(Para(footer))
    return out


def render_audit(doc: Mapping[str, Any], fmt: str) -> str:
    """``audit.md`` (fmt "md") or ``audit.html`` (fmt "html") of an audit document."""
    return render_document(build_audit_report(doc), fmt)
