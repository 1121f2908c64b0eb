"""The adaptive stage on the zoo of obfuscated models, and its cost on honest models (issue 24).

    python -m benchmarks.adaptive zoo [--n 100] [--families a,b] [--threads 1]   # audit every family
    python -m benchmarks.adaptive controls [--n 500] [--threads 1]               # cost on honest models
    python -m benchmarks.adaptive render                                         # docs/adaptive.md

``zoo`` runs ``harness audit`` with its default settings except ``--suite quick --n N`` on every
family of tests/zoo.py (the weights of tests/zoo/weights.json), with a claim of 0.9 (far above any
family), and keeps one record per family in docs/adaptive/runs/: the audit's outcome, AutoAttack
standard's own number from the audit's cascade (the first four stages, judged on the model), the
number after the adaptive stage, the remedy that decided and the stage's cost. ``controls``
evaluates the honest bases (ERM and PGD-AT) with the quick suite, once with the adaptive stage
and once without, and records the headline and the wall time of both. ``render`` writes
docs/adaptive.md from those records and the oracles of benchmarks/zoo.py (docs/adaptive/zoo/);
nothing in the tables is typed by hand. Run one command at a time on a quiet machine: the
times are wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "docs" / "adaptive" / "runs"
ORACLES = ROOT / "docs" / "adaptive" / "zoo"
PAGE = ROOT / "docs" / "adaptive.md"
ZOO = ROOT / "tests" / "zoo.py"
CLAIM = 0.9


def _zoo() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    import zoo

    return zoo


def _weights(family: str) -> str:
    """The base a family wraps, as benchmarks/zoo.py chose it (tests/zoo/weights.json)."""
    record = json.loads((ROOT / "tests" / "zoo" / "weights.json").read_text())
    base = (record.get("families") or {}).get(family, "at")
    return str(ROOT / "tests" / "zoo" / f"{base}.safetensors")


def _base_name(family: str) -> str:
    return Path(_weights(family)).stem


def audit_family(family: str, n: int, threads: int) -> Dict[str, Any]:
    """``harness audit`` of one family (a subprocess, as a reviewer runs it) and its record."""
    out = ROOT / "runs" / "adaptive-audits" / f"{family}-n{n}"  # the audit itself stays out of git
    cmd = [
        sys.executable, "-m", "harness", "audit", "--model", f"{ZOO}:{family}", "--checkpoint", _weights(family),
        "--dataset", "fashion-mnist", "--eps", "0.1", "--claim", str(CLAIM), "--n", str(n),
        "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    record: Dict[str, Any] = {"family": family, "base": _base_name(family), "n": n, "exit": done.returncode}
    from harness.core.runtime import git_sha

    record["harness"] = git_sha(ROOT) or "unknown"  # the commit that ran it ("-dirty": with changes)
    shown = [c if c != sys.executable else "python" for c in cmd]
    record["command"] = " ".join(c.replace(f"{ROOT}/", "") for c in shown)  # as run from the repository root
    record["wall_s"] = wall
    path = out / "audit.json"
    if not path.exists():
        record["error"] = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return record
    doc = json.loads(path.read_text())
    ev = doc["eval"]
    aa = [a for a in ev["attacks"] if (a.get("descriptor") or {}).get("library") == "pyautoattack"]
    stage = ev.get("adaptive") or {}
    record.update(
        outcome=doc["verdict"]["outcome"],
        checks_verdict=ev["checks"]["verdict"],
        final_verdict=stage.get("verdict"),
        clean=ev["clean"]["accuracy"],
        autoattack=aa[-1]["after"]["accuracy"] if aa else None,
        suite=stage.get("suite_robust", {}).get("accuracy"),
        adaptive=doc["measured"]["accuracy"],
        ci95=doc["measured"]["ci95"],
        decided_by=doc["verdict"].get("decided_by"),
        flags=[{"check": f["check"], "status": f["status"], "outcome": f["outcome"]} for f in stage.get("flags", [])],
        remedies=[
            {k: r.get(k) for k in ("remedy", "round", "broke", "ran_on", "skipped", "wall_s")}
            for r in stage.get("remedies", [])
        ],
        judge=(ev.get("judge") or {}).get("rule", "one forward pass"),
        stage_wall_s=stage.get("wall_s"),
        stage_passes=stage.get("passes"),
        eval_wall_s=ev["cost"]["wall_s"],
        per_example_robust=ev["per_example"]["robust"],
    )
    return record


def controls(n: int, threads: int) -> Dict[str, Any]:
    """The honest bases with the quick suite, with and without the adaptive stage."""
    import torch

    import harness

    torch.set_num_threads(threads)
    zoo = _zoo()
    out: Dict[str, Any] = {"n": n, "threads": threads, "models": []}
    for base in ("erm", "at"):
        model = zoo.build("plain", str(ROOT / "tests" / "zoo" / f"{base}.safetensors"))
        row: Dict[str, Any] = {"base": base}
        for mode in ("off", "auto"):
            t0 = time.perf_counter()
            r = harness.evaluate(model, "fashion-mnist", eps=0.1, suite="quick", n=n, adaptive=mode)
            row[mode] = {
                "wall_s": time.perf_counter() - t0,
                "robust": r.robust_accuracy,
                "ci95": list(r.robust_ci95),
                "verdict": r.verdict,
                "checks_verdict": r.checks.verdict,
                "remedies": [x.remedy for x in r.adaptive.remedies] if r.adaptive else [],
                "stage_wall_s": r.adaptive.wall_s if r.adaptive else None,
            }
        out["models"].append(row)
    return out


def _pct(v: Optional[float]) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _oracle(family: str, base: str, n: int) -> Optional[Dict[str, Any]]:
    """The oracle of benchmarks/zoo.py for this family on the first n points (its per-example
    record cut to n when it was measured on more)."""
    for size in sorted({n, 100, 500}, key=lambda s: (s != n, s)):
        path = ORACLES / f"oracle-{family}-{base}-n{size}.json"
        if path.exists() and size >= n:
            doc = json.loads(path.read_text())
            robust = doc["per_example"]["robust"][:n]
            return {"robust": sum(bool(r) for r in robust) / n, "per_example": robust, "wall_s": doc.get("wall_s")}
    return None


def _before(family: str, base: str, n: int) -> str:
    """The same audit (claim 0.9, default settings, same n) as the harness ran it before the
    adaptive stage (benchmarks/zoo.py's stored audits, made at 421a606)."""
    path = ORACLES / f"audit-{family}-{base}-n{n}-claim{CLAIM:.2f}.json"
    if not path.exists():
        return "—"
    doc = json.loads(path.read_text())
    if doc.get("outcome") == "error":
        return "crash: " + str(doc.get("cause") or doc.get("crash", "")).replace("|", "/")[:80]
    return f"{doc['outcome']} ({_pct(doc.get('measured'))})"


# size: the page, section by section, every number from a record
def render() -> str:
    records = [json.loads(p.read_text()) for p in sorted(RUNS.glob("zoo-*.json"))]
    lines = [
        "# When a check fails: the adaptive stage",
        "",
        "A sanity check that fails or warns no longer ends the evaluation with a doubt: after the suite, the",
        "adaptive stage (`--adaptive auto`, the default) runs the remedy of every flagged check on the points still",
        "robust (BPDA at the module that cuts or falsifies the gradient, EOT for randomised models, attacks on",
        "log-probabilities or rescaled logits, more restarts, more Square queries, transfer from a distilled",
        "surrogate, SPSA gradient estimates), confirms every adversarial example on the model's own forward pass",
        "(a majority of 9 draws for a randomised model), and says which way each flag went: **resolved** (the",
        "stage converged: a last round found at most 0.5% more) or **stands**. The headline is the worst case over",
        "the suite and the stage; the audit compares a claim with it, so a claim above its interval is refuted",
        "whatever the checks said.",
        "",
        "## The zoo of obfuscated models",
        "",
        "Families from Athalye et al. 2018, Tramer et al. 2020 and their sources, each wrapping a small CNN trained",
        "on Fashion-MNIST (tests/zoo.py, weights in tests/zoo/, trained by `benchmarks/zoo.py train`). Each row is",
        "`harness audit` with default settings but `--suite quick --n N` (the command is in the record), a claim",
        f"of {CLAIM:.0%}; *AutoAttack* is AutoAttack standard's own number from that audit's cascade (on the model",
        "itself); *oracle* is the strongest attack written with the family's internals known",
        "(`benchmarks/zoo.py oracle`: AutoAttack and PGD through the transparent model, EOT for the random ones,",
        "judged on the real model, per-example worst case with AutoAttack on the model itself), on the same",
        "points. Robust accuracy in percent.",
        "",
        "| family | base | n | AutoAttack alone | harness adaptive [95% CI] | oracle | within 3 points "
        "| remedy that decided | flags | stage cost (s) | audit of a 90% claim | the same audit before the stage |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in records:
        if "error" in r:
            lines.append(f"| {r['family']} | {r['base']} | {r['n']} | — | error: {r['error']} | | | | | | | |")
            continue
        oracle = _oracle(r["family"], r["base"], r["n"])
        within = "—" if oracle is None else ("yes" if r["adaptive"] <= oracle["robust"] + 0.03 + 1e-9 else "**no**")
        decided = (r.get("decided_by") or "").replace("|", "/")
        flags = ", ".join(f"{f['check']} {f['outcome']}" for f in r.get("flags", [])) or "none"
        ci = r.get("ci95") or [None, None]
        lines.append(
            f"| {r['family']} | {r['base']} | {r['n']} | {_pct(r.get('autoattack'))} | {_pct(r['adaptive'])} "
            f"[{_pct(ci[0])}, {_pct(ci[1])}] | {_pct(oracle['robust']) if oracle else '—'} | {within} | {decided} | "
            f"{flags} | {r.get('stage_wall_s') or 0:.0f} | {r['outcome']} | {_before(r['family'], r['base'], r['n'])} |"
        )
    ctrl_path = RUNS / "controls.json"
    if ctrl_path.exists():
        c = json.loads(ctrl_path.read_text())
        lines += [
            "",
            "## Honest controls",
            "",
            f"The bases themselves (no obfuscation), quick suite on the first {c['n']} test points, "
            f"{c['threads']} thread(s), with the adaptive stage and without it (`benchmarks/adaptive.py controls`).",
            "",
            "| base | robust, stage off | robust, stage auto | verdict | remedies run | wall off (s) | wall auto (s) "
            "| the stage itself (s) | extra |",
            "|---|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for m in c["models"]:
            off, on = m["off"], m["auto"]
            extra = on["wall_s"] / off["wall_s"] - 1 if off["wall_s"] else None
            lines.append(
                f"| {m['base']} | {_pct(off['robust'])} | {_pct(on['robust'])} | {on['verdict']} | "
                f"{', '.join(on['remedies']) or 'none'} | {off['wall_s']:.0f} | {on['wall_s']:.0f} | "
                f"{on.get('stage_wall_s') or 0:.3g} | {'—' if extra is None else f'{100 * extra:+.0f}%'} |"
            )
        lines += [
            "",
            "*extra* is the whole evaluation's wall time with the stage over without it, measured one after the other",
            "in one process (so it carries the machine's noise); *the stage itself* is the time the stage reports.",
            "When no check fails the stage plans no remedy: the issue's limit is 20% of the quick suite's time.",
        ]
    lines += [
        "",
        "## What would defeat it",
        "",
        "- A culprit that changes shape in a way the measured derivative cannot map back (neither the same layout",
        "  nor more channels at the same positions), with no gradient-free attack strong enough: the flag then",
        "  stands, and the report says so.",
        "- A randomised model whose randomness does not follow torch's generator defeats the lying-gradient check",
        "  (it is skipped) but not EOT.",
        "- The binarization test sees only what lies before the model's last Linear layer: masking after the head",
        "  (a hard-label vote, scaled logits) passes it, and a model without a final Linear or a randomised one",
        "  skips it (the other checks flag those); it tests 10 points, so one miss is within its rule.",
        "- Remedies only ever add attacks: a defense no attack here can break (BPDA with a bad stand-in, a",
        "  gradient-free attack with too few queries) keeps a number that is an upper bound, not the truth; the",
        "  convergence rule (a last round that finds nothing more) is evidence, not proof.",
        "",
        "Records: docs/adaptive/runs/ (one per family, written by `benchmarks/adaptive.py zoo`); oracles:",
        "docs/adaptive/zoo/ (`benchmarks/zoo.py`).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    z = sub.add_parser("zoo")
    z.add_argument("--n", type=int, default=100)
    z.add_argument("--families", default=None, help="comma-separated; default: every family")
    z.add_argument("--threads", type=int, default=1)
    c = sub.add_parser("controls")
    c.add_argument("--n", type=int, default=500)
    c.add_argument("--threads", type=int, default=1)
    sub.add_parser("render")
    args = p.parse_args(argv)
    RUNS.mkdir(parents=True, exist_ok=True)
    if args.what == "zoo":
        families = args.families.split(",") if args.families else list(_zoo().FAMILIES)
        for family in families:
            record = audit_family(family, args.n, args.threads)
            (RUNS / f"zoo-{family}.json").write_text(json.dumps(record, indent=1) + "\n")
            print(family, record.get("outcome"), record.get("adaptive"), record.get("error", ""), flush=True)
    elif args.what == "controls":
        (RUNS / "controls.json").write_text(json.dumps(controls(args.n, args.threads), indent=1) + "\n")
    PAGE.write_text(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
