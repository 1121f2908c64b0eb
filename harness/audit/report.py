"""Rendering an audit document: the CLI summary, Markdown and a self-contained HTML page.

Pure functions of the audit.json document (no torch), so an audit can be re-rendered from its
JSON alone. The HTML page has its style inline and no external links or scripts.
"""
from __future__ import annotations

import html
from typing import Any, Dict, List, Optional, Sequence, Tuple

_OUTCOME = {"holds": "CLAIM HOLDS", "overstated": "CLAIM OVERSTATED", "unreliable": "EVALUATION UNRELIABLE"}


def pct(p: Optional[float]) -> str:
    return "n/a" if p is None else f"{100 * p:.1f}%"


def _ci(prop: Dict[str, Any]) -> str:
    lo, hi = prop["ci95"]
    return f"{pct(prop['accuracy'])} [{pct(lo)}, {pct(hi)}]"


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}" if v >= 10 else f"{v:.2g}"
    return str(v)


def _model_line(doc: Dict[str, Any]) -> str:
    m = doc["model"]
    if m["kind"] == "robustbench":
        files = ", ".join(f"{f['path']} (sha256 {f['sha256'][:12]})" for f in m.get("files", []))
        return f"RobustBench {m['name']} ({m['architecture']}, robustbench {m.get('robustbench_version')}), weights {files}"
    what = f"{m['file']}:{m['factory']} (file sha256 {m['file_sha256'][:12]})" if m["kind"] == "file" else f"registered model {m['name']}"
    ck = m.get("checkpoint")
    w = f"weights {ck['path']} (sha256 {ck['sha256'][:12]})" if ck else "no checkpoint (weights as the factory returned them)"
    norm = m.get("normalize_added")
    return f"{what}, {w}" + (f"; Normalize added by the reviewer ({norm['source']}: mean {norm['mean']}, std {norm['std']})" if norm else "")


def _guard_rows(doc: Dict[str, Any]) -> List[Tuple[str, str, str]]:
    return [(g["rule"], g["status"], g["message"]) for g in doc["guard_rails"]["findings"]]


def _strength_rows(doc: Dict[str, Any]) -> Tuple[List[str], List[List[str]]]:
    head = ["attack", "steps", "restarts", "loss", "targets / queries", "gradient steps per point", "passes per attacked point (fwd / bwd)",
            "robust accuracy"]
    rows: List[List[str]] = []
    c = doc["strength"]["claimed"]
    rep = c.get("replayed")
    rows.append([f"claimed: {c.get('text') or '(not given)'}", _num(c.get("steps")), _num(c.get("restarts")), c.get("loss") or "-", "-",
                 _num(c.get("gradient_steps_per_example")),
                 f"{_num(rep['passes'].get('forward_per_attacked'))} / {_num(rep['passes'].get('backward_per_attacked'))}" if rep else "-",
                 (f"{pct(doc['claim']['value'])} claimed; {_ci(rep['robust'])} as replayed here ({rep['label']})" if rep
                  else f"{pct(doc['claim']['value'])} claimed (not replayed)")])
    for r in doc["strength"]["harness"]:
        tq = r["queries"] if r.get("queries") is not None else r.get("targets")
        rows.append([f"harness: {r['label']}", _num(r["steps"]), _num(r["restarts"]), r.get("loss") or "-", _num(tq),
                     _num(r["gradient_steps"]), f"{_num(r['forward_per_attacked'])} / {_num(r['backward_per_attacked'])}",
                     f"{pct(r['accuracy_after'])} after it (cumulative, ran on {r['ran_on']})"])
    return head, rows


def summary_lines(doc: Dict[str, Any]) -> List[str]:
    """What the CLI prints: the verdict first, then the evidence."""
    v = doc["verdict"]
    t = doc["threat"]
    lines = [f"audit: {_OUTCOME[v['outcome']]}" + (" (flagged)" if v["flagged"] else ""), f"  {v['text']}"]
    lines.append(f"  model: {_model_line(doc)}")
    lines.append(f"  data: {doc['data']['dataset']} test, first {doc['data']['n']} points; {t['norm']} eps={t['eps']}; suite {doc['suite']}; seed {doc['seed']}")
    lines.append(f"  clean accuracy {_ci(doc['clean'])}")
    lines.append(f"  measured robust accuracy {_ci(doc['measured'])} ({doc['measured']['label']})")
    lines.append(f"  sanity checks: {v['checks_verdict']}" + (f" ({'; '.join(v['checks_reasons'][:3])})" if v["checks_reasons"] else ""))
    s = doc["strength"]
    lines.append(f"  claimed attack: {s['claimed'].get('text') or '(not given)'}; {s['comparison']}")
    rep = s["claimed"].get("replayed")
    if rep:
        lines.append(f"  claimed attack as replayed here ({rep['label']}): robust accuracy {_ci(rep['robust'])}")
    for a in doc["eval"]["attacks"]:
        lines.append(f"  after {a['label']:<44} {pct(a['after']['accuracy']):>7}  (ran on {a['ran_on']}, broke {a['broke']})")
    for g in doc["guard_rails"]["findings"]:
        if g["status"] != "ok":
            lines.append(f"  WARNING ({g['rule']}): {g['message']}")
    for note in doc.get("notes", []):
        lines.append(f"  note: {note}")
    return lines


# -- Markdown ------------------------------------------------------------------------------------

def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    out = ["| " + " | ".join(_md_cell(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return out


def render_markdown(doc: Dict[str, Any]) -> str:
    v = doc["verdict"]
    t = doc["threat"]
    L: List[str] = [f"# Audit: {_OUTCOME[v['outcome']].lower()}" + (" (flagged)" if v["flagged"] else ""), ""]
    L += [f"**Verdict.** {v['text']}.", ""]
    L += ["| | value |", "|---|---|",
          f"| claimed robust accuracy | {pct(v['claim'])} ({_md_cell(doc['claim']['attack'].get('text') or 'attack not given')}) |",
          f"| measured robust accuracy | {_ci(doc['measured'])} |",
          f"| difference (claimed - measured) | {v['gap_points']:+.1f} points |",
          f"| clean accuracy | {_ci(doc['clean'])} |",
          f"| sanity checks | {v['checks_verdict']} |",
          f"| threat model | {t['norm']} eps={t['eps']} ({t['eps_value']:.6g} in [0,1] pixel units) |",
          f"| data | {doc['data']['dataset']} test split, first {doc['data']['n']} points in fixed order ({_md_cell(doc['data'].get('source', ''))}) |",
          f"| suite | {doc['suite']}, seed {doc['seed']} |",
          f"| model | {_md_cell(_model_line(doc))} |", ""]
    L += [f"Measured: {_md_cell(doc['measured']['label'])}.", ""]
    if v["flags"]:
        L += ["## Flags", ""] + [f"- {_md_cell(f)}" for f in v["flags"]] + [""]
    if v["checks_reasons"] and v["checks_verdict"] in ("suspicious", "unreliable"):
        L += ["## Sanity-check reasons", ""] + [f"- {_md_cell(r)}" for r in v["checks_reasons"]] + [""]
    L += ["## Attack strength: the claim's attack beside the harness's", "", f"{doc['strength']['comparison']}.", ""]
    head, rows = _strength_rows(doc)
    L += _md_table(head, rows) + [""]
    rep = doc["strength"]["claimed"].get("replayed")
    if rep:
        L += [f"The claimed attack was replayed on the same points as {rep['label']} "
              f"(step size {rep['descriptor'].get('step_size_expr') or rep['descriptor'].get('step_size')}). "
              + " ".join(rep.get("assumed", [])), ""]
    hc = doc["strength"]["harness_cost"]
    L += [f"Harness evaluation cost: {hc['wall_s']:.1f} s, {hc['forward_per_example']:.0f} forward / "
          f"{hc['backward_per_example']:.0f} backward passes per example.", ""]
    L += ["## Guard rails", "", f"On the first {doc['guard_rails']['sample']} test points (forward passes only).", ""]
    L += _md_table(["rule", "status", "finding"], _guard_rows(doc)) + [""]
    checks = doc["eval"].get("checks", {})
    if checks.get("findings"):
        L += ["## Sanity checks", ""]
        L += _md_table(["check", "status", "message"], [(f.get("check"), f.get("status"), f.get("message", "")) for f in checks["findings"]]) + [""]
    if doc.get("notes"):
        L += ["## Notes", ""] + [f"- {_md_cell(n)}" for n in doc["notes"]] + [""]
    L += ["## Verdict rule", "", v["rule"] + ".", ""]
    env = doc.get("env", {})
    L += [f"_harness {env.get('harness')} (git {env.get('git_sha')}), torch {env.get('versions', {}).get('torch')}, "
          f"pyautoattack {env.get('versions', {}).get('pyautoattack')}; {doc['created']}; audit took {doc['wall_s']:.1f} s._", ""]
    return "\n".join(L)


# -- HTML ----------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}.verdict{padding:.8rem 1rem;border-radius:6px;font-size:1.05rem}
.holds{background:#e6f4ea;border:1px solid #34a853}.overstated{background:#fdecea;border:1px solid #d93025}
.unreliable{background:#fff4e5;border:1px solid #f29900}.warn{color:#b06000;font-weight:600}.error{color:#d93025;font-weight:600}
.ok{color:#188038}.small{color:#555;font-size:.9rem}"""


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(head: Sequence[str], rows: Sequence[Sequence[Any]], status_col: Optional[int] = None) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{_h(c)}</th>" for c in head) + "</tr></thead><tbody>"]
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            cls = f' class="{_h(c)}"' if status_col == i and c in ("ok", "warn", "error", "fail", "skipped") else ""
            cells.append(f"<td{cls}>{_h(c)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</tbody></table>"


def render_html(doc: Dict[str, Any]) -> str:
    v = doc["verdict"]
    t = doc["threat"]
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Audit: ", _h(_OUTCOME[v["outcome"]].lower()),
             "</title><style>", _CSS, "</style></head><body>"]
    parts.append(f"<h1>Audit: {_h(_OUTCOME[v['outcome']].lower())}{' (flagged)' if v['flagged'] else ''}</h1>")
    parts.append(f"<p class=\"verdict {_h(v['outcome'])}\"><strong>Verdict.</strong> {_h(v['text'])}.</p>")
    parts.append(_html_table(["", "value"], [
        ("claimed robust accuracy", f"{pct(v['claim'])} ({doc['claim']['attack'].get('text') or 'attack not given'})"),
        ("measured robust accuracy", _ci(doc["measured"])),
        ("difference (claimed - measured)", f"{v['gap_points']:+.1f} points"),
        ("clean accuracy", _ci(doc["clean"])),
        ("sanity checks", v["checks_verdict"]),
        ("threat model", f"{t['norm']} eps={t['eps']} ({t['eps_value']:.6g} in [0,1] pixel units)"),
        ("data", f"{doc['data']['dataset']} test split, first {doc['data']['n']} points in fixed order ({doc['data'].get('source', '')})"),
        ("suite", f"{doc['suite']}, seed {doc['seed']}"),
        ("model", _model_line(doc)),
    ]))
    parts.append(f"<p class=\"small\">Measured: {_h(doc['measured']['label'])}.</p>")
    if v["flags"]:
        parts.append("<h2>Flags</h2><ul>" + "".join(f"<li class=\"warn\">{_h(f)}</li>" for f in v["flags"]) + "</ul>")
    if v["checks_reasons"] and v["checks_verdict"] in ("suspicious", "unreliable"):
        parts.append("<h2>Sanity-check reasons</h2><ul>" + "".join(f"<li>{_h(r)}</li>" for r in v["checks_reasons"]) + "</ul>")
    parts.append(f"<h2>Attack strength: the claim's attack beside the harness's</h2><p>{_h(doc['strength']['comparison'])}.</p>")
    head, rows = _strength_rows(doc)
    parts.append(_html_table(head, rows))
    rep = doc["strength"]["claimed"].get("replayed")
    if rep:
        parts.append(f"<p class=\"small\">The claimed attack was replayed on the same points as {_h(rep['label'])} (step size "
                     f"{_h(rep['descriptor'].get('step_size_expr') or rep['descriptor'].get('step_size'))}). {_h(' '.join(rep.get('assumed', [])))}</p>")
    hc = doc["strength"]["harness_cost"]
    parts.append(f"<p class=\"small\">Harness evaluation cost: {hc['wall_s']:.1f} s, {hc['forward_per_example']:.0f} forward / "
                 f"{hc['backward_per_example']:.0f} backward passes per example.</p>")
    parts.append(f"<h2>Guard rails</h2><p class=\"small\">On the first {doc['guard_rails']['sample']} test points (forward passes only).</p>")
    parts.append(_html_table(["rule", "status", "finding"], _guard_rows(doc), status_col=1))
    checks = doc["eval"].get("checks", {})
    if checks.get("findings"):
        parts.append("<h2>Sanity checks</h2>" + _html_table(["check", "status", "message"],
                                                             [(f.get("check"), f.get("status"), f.get("message", "")) for f in checks["findings"]],
                                                             status_col=1))
    if doc.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_h(n)}</li>" for n in doc["notes"]) + "</ul>")
    parts.append(f"<h2>Verdict rule</h2><p>{_h(v['rule'])}.</p>")
    env = doc.get("env", {})
    parts.append(f"<p class=\"small\">harness {_h(env.get('harness'))} (git {_h(env.get('git_sha'))}), torch "
                 f"{_h(env.get('versions', {}).get('torch'))}, pyautoattack {_h(env.get('versions', {}).get('pyautoattack'))}; "
                 f"{_h(doc['created'])}; audit took {doc['wall_s']:.1f} s.</p>")
    parts.append("</body></html>\n")
    return "".join(parts)
