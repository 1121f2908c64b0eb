"""Reproduce the papers: train each defense's recipe, evaluate it the paper's way and with
AutoAttack, and write ``docs/reproductions.md`` from the run directories alone.

    python benchmarks/reproduce.py --dataset fashion-mnist [--defenses erm,fast-at,pgd-at,trades,free-at]
                                   [--variant fast-at=clipped-start] [--seeds 0,1,2] [--epochs N]
                                   [--out runs/reproduce] [--threads 1] [--device auto] [--resume]
                                   [--eval-n N] [--aa-n 1000] [--aa-suite autoattack] [--no-aa]
                                   [--doc docs/reproductions.md]
    python benchmarks/reproduce.py --render-only [--out runs/reproduce] [--doc docs/reproductions.md]

For each defense (one at a time, in the order given) and seed: the recipe of that defense for the
data set (its default variant, or ``--variant DEFENSE=NAME``) is resolved as ``harness run``
would, with the evaluation set to the paper's (the recipe's ``paper.suite``, its n and its
checkpoint: ``last`` for the final weights, ``best`` where the paper selected on val); the run
trains, selects, evaluates under the paper's attack, and then under AutoAttack (``--aa-suite``,
``--aa-n`` points). Run directories are named ``DEFENSE-DATASET-VARIANT-sSEED`` under ``--out``:
a finished one is skipped; an unfinished one is continued with ``--resume`` (training from its
last finished epoch, evaluation from its last finished attack) and refused without it.

The table is rendered from the run directories only (``config.json``'s recipe record holds the
paper's number and its citation, ``training.json`` the cost, ``eval/*.json`` our numbers): nothing
in ``docs/reproductions.md`` is typed by hand. ``--render-only`` re-renders from finished (or
half-finished) runs; what is missing shows as "not run" or "not finished".

``--epochs`` shortens training (for smoke tests); a shortened run says so in the epochs column.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.core.errors import HarnessError  # noqa: E402
from harness.core.io import atomic_write_text, read_json  # noqa: E402
from harness.core.tree import leaves  # noqa: E402

DEFAULT_DEFENSES = ("erm", "fast-at", "pgd-at", "trades", "free-at")
DEFAULT_DOC = "docs/reproductions.md"
DEFAULT_CO_SWEEP = "docs/co-sweep"  # benchmarks/co_sweep.py --out docs/co-sweep
DEFAULT_AB_OUT = "runs/ab"  # --ab runs
FALLBACK_SUITE = "smoke"  # a recipe without a paper evaluation (the generated test data sets)


# -- running ----------------------------------------------------------------------------------------


def run_name(defense: str, dataset: str, variant: str, seed: int, tag: str = "") -> str:
    return f"{defense}-{dataset}-{variant}-s{seed}{'-' + tag if tag else ''}".replace("+", "_")


def plan_run(
    defense: str,
    dataset: str,
    *,
    seed: int,
    variant: Optional[str],
    out: Path,
    threads: Optional[int],
    device: str,
    epochs: Optional[int],
    eval_n: Optional[int],
    data_dir: Optional[str],
    sets: Optional[Mapping[str, Any]] = None,
    tag: str = "",
    eval_suite: Optional[str] = None,
) -> Dict[str, Any]:
    """The resolved config of one reproduction run (as ``harness run`` would resolve it); ``sets``
    (``--set`` values, nested) override the recipe and ``tag`` ends the run's name (an A/B arm)."""
    from harness import config as C

    flags: Dict[str, Any] = {"defense": defense, "dataset": dataset, "seed": seed, "device": device}
    flags = C.deep_merge(flags, sets or {})
    if variant:
        flags["recipe"] = {"variant": variant}
    if threads:
        flags["threads"] = threads
    if data_dir:
        flags = C.deep_merge(flags, {"data": {"data_dir": data_dir}})
    if epochs:
        flags = C.deep_merge(flags, {"train": {"epochs": epochs}})
    cfg = C.resolve(flags)
    paper = cfg["recipe"].get("paper") if cfg.get("recipe") else None
    suite = eval_suite or (paper["suite"] if paper else FALLBACK_SUITE)
    n = eval_n or (paper["n"] if paper and not eval_suite else None)
    checkpoint = paper["checkpoint"] if paper else "last"
    cfg = C.resolve(
        C.deep_merge(
            flags,
            {
                "eval": {"suite": suite, "n": n, "checkpoints": [checkpoint]},
                "out": {
                    "root": str(out),
                    "name": run_name(defense, dataset, cfg["recipe"].get("variant") or "none", seed, tag),
                },
            },
        )
    )
    return cfg


def reproduce_one(
    cfg: Dict[str, Any], *, resume: bool, aa_suite: Optional[str], aa_n: Optional[int], progress: bool = False
) -> Path:
    """Train and evaluate one run (or continue it); returns its directory."""
    from harness import api
    from harness.core.rundir import RunDir
    from harness.pipeline import run_pipeline

    path = Path(cfg["out"]["root"]) / cfg["out"]["name"]
    if path.exists():
        env = read_json(path / "env.json") if (path / "env.json").exists() else {}
        if env.get("status") != "finished":
            if not resume:
                raise HarnessError(f"{path} exists and is not finished: pass --resume to continue it")
            print(f"continuing {path}", flush=True)
            run_pipeline(None, resume=str(path), progress=progress)
        else:
            print(f"{path}: trained and evaluated with {cfg['eval']['suite']} already", flush=True)
    else:
        print(f"training {path}", flush=True)
        run_pipeline(cfg, progress=progress)
    run = RunDir.open(path)
    if aa_suite:
        saved = run.read_config()
        api.evaluate_run(
            run.path, checkpoints=list(saved["eval"]["checkpoints"]), suite=aa_suite, n=aa_n, progress=progress
        )
        try:
            from reports.run_report import render_run

            render_run(run.path)
        except ImportError:  # reports are optional in a minimal build
            pass
    return path


# -- rendering (no torch) ---------------------------------------------------------------------------


def _pct(p: Optional[float]) -> str:
    return "-" if p is None else f"{100 * p:.2f}"


def _prop(doc: Optional[Mapping[str, Any]]) -> str:
    if not doc or doc.get("accuracy") is None:
        return "-"
    lo, hi = (doc.get("ci95") or [None, None])[:2]
    ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None else ""
    return f"{100 * doc['accuracy']:.2f}{ci}"


def _minutes(s: Optional[float]) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.2f} h"


def _within(value: Optional[float], doc: Optional[Mapping[str, Any]], bound: str = "") -> str:
    """Does the published value lie in our 95% interval ("yes" / "no"); for an upper bound, is
    our interval at or below it."""
    if value is None or not doc or not doc.get("ci95"):
        return "-"
    lo, hi = doc["ci95"][:2]
    if bound == "upper":
        return "yes (below the bound)" if lo <= value else "no (above the bound)"
    return "yes" if lo <= value <= hi else "no"


def _live_record(run: Path) -> Optional[Dict[str, Any]]:
    """What the table needs from one run directory (``None`` if it carries no recipe record)."""
    try:
        cfg = read_json(run / "config.json")
    except HarnessError:
        return None
    rec = cfg.get("recipe") or {}
    if not rec.get("defense"):
        return None
    env = read_json(run / "env.json") if (run / "env.json").exists() else {}
    training = read_json(run / "training.json") if (run / "training.json").exists() else None
    metrics = run / "metrics.jsonl"
    epochs_done = sum(1 for line in metrics.read_text().splitlines() if line.strip()) if metrics.exists() else 0
    ev = cfg.get("eval") or {}
    ckpt = (ev.get("checkpoints") or ["last"])[0]
    paper_eval = _read_eval(run, ev.get("suite"), ckpt)
    aa_eval = None
    for path in sorted((run / "eval").glob(f"*--{ckpt}.json")) if (run / "eval").exists() else []:
        doc = read_json(path)
        names = {a.get("name") for a in doc.get("attacks", [])}
        if doc.get("suite") != ev.get("suite") and names & {"apgd-ce", "apgd-t", "fab-t", "square"}:
            aa_eval = doc
    return {
        "run": run.name,
        "source": f"run directory `{run.as_posix()}`",
        "cfg": cfg,
        "recipe": rec,
        "env": env,
        "training": training,
        "epochs_done": epochs_done,
        "status": env.get("status"),
        "checkpoint": ckpt,
        "paper_eval": paper_eval,
        "aa_eval": aa_eval,
    }


# The fields of a row kept in an archived record; the evaluations lose their per-example outcomes
# (10,000 of them for the papers' n), which stay in the run directory.
RECORD_FIELDS = ("run", "cfg", "env", "training", "epochs_done", "status", "checkpoint", "paper_eval", "aa_eval")
RECORD_SCHEMA = "reproduction-record"


def _progress(row: Mapping[str, Any]) -> Tuple[int, int, int, int]:
    """How far a run got: finished, epochs, paper evaluation, AutoAttack evaluation."""
    return (
        int(row.get("status") == "finished"),
        int(row.get("epochs_done") or 0),
        int(bool(row.get("paper_eval"))),
        int(bool(row.get("aa_eval"))),
    )


def to_record(row: Mapping[str, Any], *, archived_from: str) -> Dict[str, Any]:
    doc: Dict[str, Any] = {"schema": RECORD_SCHEMA, "schema_version": 1, "archived_from": archived_from}
    for key in RECORD_FIELDS:
        value = row.get(key)
        if key in ("paper_eval", "aa_eval") and value:
            value = {k: v for k, v in value.items() if k != "per_example"}
        doc[key] = value
    return doc


def _archived(records: Optional[Path]) -> Dict[str, Dict[str, Any]]:
    """The archived records under ``records`` as table rows, by run name."""
    rows: Dict[str, Dict[str, Any]] = {}
    for path in sorted(records.glob("*.json")) if records is not None and records.is_dir() else []:
        try:
            doc = read_json(path)
        except HarnessError:
            continue
        if doc.get("schema") != RECORD_SCHEMA:
            continue
        row = {key: doc.get(key) for key in RECORD_FIELDS}
        row["recipe"] = (row["cfg"] or {}).get("recipe") or {}
        row["env"] = row["env"] or {}
        row["source"] = f"archived record `{path.as_posix()}` (from `{doc.get('archived_from')}`)"
        rows[row["run"]] = row
    return rows


def _verdict(ev: Mapping[str, Any]) -> str:
    """The sanity checks' verdict on an evaluation, with the failed checks' names, unless reliable."""
    checks = ev.get("checks") or {}
    verdict = checks.get("verdict")
    if not verdict or verdict == "reliable":
        return ""
    failed = [f.get("check") for f in checks.get("findings") or [] if f.get("status") == "fail"]
    return f", {verdict}" + (f": {', '.join(failed)} failed" if failed else "")


def collect(out: Path, records: Optional[Path] = None) -> List[Dict[str, Any]]:
    """One row per reproduction run: the run directories under ``out`` that carry a recipe record,
    and the records archived in ``records`` (written by :func:`archive`) for the runs that are not
    there, or that got further there than here: a run directory lost with its machine keeps its row."""
    rows = _archived(records)
    for cfg_path in sorted(out.glob("*/config.json")):
        row = _live_record(cfg_path.parent)
        if row is None:
            continue
        kept = rows.get(row["run"])
        if kept is None or _progress(row) >= _progress(kept):
            if kept is not None:
                row["source"] += f", archived in `{(records / (row['run'] + '.json')).as_posix()}`"
            rows[row["run"]] = row
    return [rows[name] for name in sorted(rows)]


def archive(out: Path, records: Path) -> List[Path]:
    """Write one record per run directory under ``out`` into ``records`` (a folder committed with
    the page), unless the record there got further; returns the files written."""
    kept = _archived(records)
    written = []
    for cfg_path in sorted(out.glob("*/config.json")):
        row = _live_record(cfg_path.parent)
        if row is None or (row["run"] in kept and _progress(kept[row["run"]]) > _progress(row)):
            continue
        target = records / f"{row['run']}.json"
        atomic_write_text(target, json.dumps(to_record(row, archived_from=cfg_path.parent.as_posix()), indent=1) + "\n")
        written.append(target)
    return written


def _read_eval(run: Path, suite: Optional[str], ckpt: str) -> Optional[Dict[str, Any]]:
    path = run / "eval" / f"{suite}--{ckpt}.json"
    return read_json(path) if suite and path.exists() else None


def _cost(row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    t = row["training"]
    if not t:
        return "-"
    ds, seed = row["cfg"]["dataset"], row["cfg"]["seed"]
    erm = next(
        (
            r
            for r in rows
            if r["cfg"]["defense"] == "erm" and r["cfg"]["dataset"] == ds and r["cfg"]["seed"] == seed and r["training"]
        ),
        None,
    )
    if erm is None:
        return "no erm run"
    if erm is row:
        return "1 (control)"
    wall = t["train_wall_s"] / max(t["epochs_run"], 1)
    erm_wall = erm["training"]["train_wall_s"] / max(erm["training"]["epochs_run"], 1)
    passes = sum(t["passes_per_example_per_epoch"].values())
    erm_passes = sum(erm["training"]["passes_per_example_per_epoch"].values())
    return f"{wall / erm_wall:.1f}x per epoch ({passes / erm_passes:.1f}x passes)"


def render(out: Path, records: Optional[Path] = None) -> str:
    rows = collect(out, records)
    lines = [
        "# Reproductions: our numbers beside the papers'",
        "",
        "Generated by `python benchmarks/reproduce.py` from the run directories under "
        f"`{out}`"
        + (f" and the records archived in `{records.as_posix()}`" if records is not None else "")
        + f" (re-render: `python benchmarks/reproduce.py --render-only --out {out}`). Every number below is read "
        "from a run directory, or from the record archived from it (the same files, less the per-example outcomes; "
        "the note of each row names its source): the paper's from the recipe record in its `config.json` (the value "
        "and its citation come from the defense's recipe in `defenses/`), ours from `eval/*.json`, the cost from "
        "`training.json`. Nothing is typed by hand.",
        "",
        'Accuracies in %; ours with the 95% Wilson interval. "paper attack": the paper\'s own evaluation replayed by '
        "the "
        'suite named under it, with the paper\'s n; "AA": AutoAttack standard (pyautoattack) on the first n test '
        "points. "
        '"in CI": whether the published number lies in our interval (clean / robust). An AA number the '
        "gradient-masking checks do not trust carries their verdict and the checks that failed (the run's "
        "`eval/autoattack--*.json` says by how much). Wall time: training steps plus "
        "the "
        "per-epoch val monitor, on the device in the env column; cost: training seconds per epoch and measured "
        "forward + backward passes per example, over the erm control of the same data set and seed.",
        "",
    ]
    if not rows:
        return "\n".join(lines + ["No reproduction runs found.", ""])
    lines += [
        "| defense | data | variant | model | epochs | paper: clean / robust | paper's attack, n | ours: clean | "
        "ours: robust (paper attack) | in CI | ours: AA robust | authors' model under AA | wall time | cost over "
        "erm | "
        "device |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: List[str] = []
    for row in rows:
        cfg, rec, t = row["cfg"], row["recipe"], row["training"]
        paper = rec.get("paper") or {}
        planned = (rec.get("differs_from_recipe") or {}).get("train.epochs")
        if t:
            epochs = f"{t['epochs_run']}/{t['epochs_planned']}"
            if t.get("stopped_early"):
                epochs += " (stopped)"
        else:
            state = row.get("status") or "not started"
            epochs = f"not finished ({state}, {row.get('epochs_done', 0)}/{cfg['train']['epochs']})"
        if planned is not None:
            epochs += f" (recipe: {planned})"
        if paper.get("clean") is not None or paper.get("robust") is not None:
            bound = " (upper bound)" if paper.get("bound") else ""
            published = f"{_pct(paper.get('clean'))} / {_pct(paper.get('robust'))}{bound}"
        else:
            published = "none published"
        pe, aa = row["paper_eval"], row["aa_eval"]
        ours_clean = _prop(pe.get("clean")) if pe else "not run"
        ours_rob = (_prop(pe.get("robust")) + f" (n={pe['data']['n']}, {row['checkpoint']})") if pe else "not run"
        within = "-"
        if pe:
            robust_in = _within(paper.get("robust"), pe.get("robust"), paper.get("bound", ""))
            within = f"{_within(paper.get('clean'), pe.get('clean'))} / {robust_in}"
        ours_aa = (_prop(aa.get("robust")) + f" (n={aa['data']['n']}){_verdict(aa)}") if aa else "not run"
        authors_aa = _pct(paper.get("autoattack")) if paper.get("autoattack") is not None else "-"
        wall = _minutes(t.get("wall_s")) if t else "-"
        device = row["env"].get("device_name") or row["env"].get("device")
        if device and row["env"].get("device") == "cpu" and row["env"].get("torch_threads"):
            threads = int(row["env"]["torch_threads"])
            device += f", {threads} thread{'s' if threads != 1 else ''}"  # the seconds depend on them
        ref = len(notes) + 1
        notes.append(
            f"{ref}. `{row['run']}` ({row['source']}): {paper.get('source', 'no paper')}. Paper's attack: "
            f"{paper.get('attack', '-')}"
            + (f"; {paper['note']}" if paper.get("note") else "")
            + ". Recipe notes: "
            + ("; ".join(rec.get("notes") or []) or "none")
            + "."
        )
        lines.append(
            f"| {cfg['defense']} [{ref}] | {cfg['dataset']} | {rec.get('variant')} | {cfg['model']} | "
            f"{epochs} | "
            f"{published} | {paper.get('suite') or (pe or {}).get('suite', '-')}, "
            f"n={paper.get('n') or ((pe or {}).get('data') or {}).get('n', '-')} | {ours_clean} | {ours_rob} "
            f"| {within} | "
            f"{ours_aa} | {authors_aa} | {wall} | {_cost(row, rows)} | {device or '-'} |"
        )
    lines += ["", "## Sources and notes", ""] + notes + [""]
    lines += _seed_summary(rows)
    return "\n".join(lines)


def _seed_summary(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """Mean and standard deviation over seeds for every (defense, data, variant) run more than once."""
    import statistics

    groups: Dict[Tuple[str, str, str], List[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["cfg"]["defense"], r["cfg"]["dataset"], r["recipe"].get("variant")), []).append(r)
    out = []
    for (defense, dataset, variant), rs in sorted(groups.items()):
        done = [r for r in rs if r["paper_eval"]]
        if len(done) < 2:
            continue

        def stat(get: Any) -> str:
            vals = [get(r) for r in done if get(r) is not None]
            if len(vals) < 2:
                return "-"
            return f"{100 * statistics.mean(vals):.2f} +- {100 * statistics.stdev(vals):.2f}"

        out.append(
            f"| {defense} | {dataset} | {variant} | {len(done)} "
            f"({', '.join(str(r['cfg']['seed']) for r in done)}) | "
            f"{stat(lambda r: r['paper_eval']['clean']['accuracy'])} | "
            f"{stat(lambda r: r['paper_eval']['robust']['accuracy'])} | "
            f"{stat(lambda r: r['aa_eval']['robust']['accuracy'] if r['aa_eval'] else None)} |"
        )
    if not out:
        return []
    return (
        [
            "## Over seeds",
            "",
            "Mean +- standard deviation over the seeds run (accuracies in %).",
            "",
            "| defense | data | variant | seeds | clean | robust (paper attack) | AA robust |",
            "|---|---|---|---|---|---|---|",
        ]
        + out
        + [""]
    )


def co_sweep_section(folder: Path, doc: Path) -> List[str]:
    """The catastrophic-overfitting sweep (``benchmarks/co_sweep.py --out FOLDER``) as a section of
    the reproductions page: its table and figure as that script wrote them, nothing retyped."""
    table, meta = folder / "co_sweep.md", folder / "co_sweep.json"
    if not table.exists():
        return []
    info = json.loads(meta.read_text()) if meta.exists() else {}
    figure = Path(os.path.relpath(folder / "co_sweep.svg", doc.parent)).as_posix()
    return [
        "## Catastrophic overfitting against the training eps",
        "",
        f"Generated by `python benchmarks/co_sweep.py --out {folder.as_posix()}` (data: {info.get('dataset', '-')}, "
        f"regime: {info.get('regime', '-')}, seed {info.get('seed', '-')}); each point is one run trained and "
        "evaluated at its eps, accuracy under the run's own selection attack on its val points at the last epoch "
        "(the papers plot the final model). Run directories are named in `co_sweep.json`.",
        "",
        f"![robust accuracy against training eps]({figure})",
        "",
        table.read_text().rstrip("\n"),
        "",
    ]


def _leaf(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


_flat = leaves


def _arms(rs: Sequence[Mapping[str, Any]]) -> Tuple[List[str], List[str]]:
    """(the config keys whose value differs between the runs of one A/B group, the departures from
    the recipe they share, as "key = value (recipe: value)")."""
    flat = [_flat({k: v for k, v in r["cfg"].items() if k not in ("out", "recipe")}) for r in rs]
    keys = sorted(set().union(*flat))
    varying = [k for k in keys if len({json.dumps(f.get(k)) for f in flat}) > 1]
    departed: Dict[str, Any] = {}
    for r in rs:
        departed.update((r["recipe"].get("differs_from_recipe") or {}).items())
    shared = [
        f"{k} = {json.dumps(flat[0].get(k))} (recipe: {json.dumps(v)})"
        for k, v in sorted(departed.items())
        if k not in varying
    ]
    return varying, shared


def ab_section(out: Path, records: Optional[Path] = None) -> List[str]:
    """The A/B runs under ``out`` (``--ab``: one recipe, one seed, a few settings changed per arm),
    rendered from their run directories or archived records: per (defense, data, seed), each arm's
    settings that differ, with what every arm departs from the recipe in alike, and its numbers.
    ``records``/README.md, if written, says what the A/B asks and why it was run as it was; it
    opens the section as written (no numbers in it: they come from the runs)."""
    rows = collect(out, records)
    if not rows:
        return []
    groups: Dict[Tuple[str, str, int], List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["cfg"]["defense"], r["cfg"]["dataset"], r["cfg"]["seed"]), []).append(r)
    about = records / "README.md" if records is not None else None
    lines = [
        "## A/B runs: one recipe, one seed, a setting changed",
        "",
        *([about.read_text().rstrip("\n"), ""] if about is not None and about.exists() else []),
        f"Generated by `python benchmarks/reproduce.py --ab ...` from the run directories under `{out.as_posix()}`"
        + (f" and the records archived in `{records.as_posix()}`" if records is not None else "")
        + ". Each group is one defense's recipe trained with the same seed (the same initial weights, data order "
        "and attack draws) in every arm; the arm column shows the settings that differ between the arms, marked "
        "(recipe) where the arm keeps the recipe's value, and the line under the group what all its arms change "
        "from the recipe alike. Clean and AA: AutoAttack standard's evaluation on the first n test points; "
        "PGD: the suite named, on its n. Accuracies in %, with the 95% Wilson interval; "
        "delta: this arm minus the recipe's arm, in points. A group trained for fewer epochs than its recipe, "
        "or on another model, says so in the line under it.",
        "",
        "| defense | data | arm | epochs | clean | AA robust | PGD robust (suite, n) | delta clean / AA / PGD | "
        "passes fwd + bwd | wall time | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: List[str] = []
    for (defense, dataset, seed), rs in sorted(groups.items()):
        varying, shared = _arms(rs)
        # the recipe's arm: the one that departs from the recipe in none of the varying keys
        base = next((r for r in rs if not set(varying) & set(r["recipe"].get("differs_from_recipe") or {})), None)
        rs = sorted(rs, key=lambda r: r is not base)
        for r in rs:
            own = r["recipe"].get("differs_from_recipe") or {}
            kept = set(r["recipe"].get("sources") or {}) - set(own)  # recipe keys this arm keeps
            arm = ", ".join(f"{k} = {_leaf(r['cfg'], k)}" + (" (recipe)" if k in kept else "") for k in varying)
            aa, pe, t = r["aa_eval"], r["paper_eval"], r["training"]
            delta = "-"
            if base is not None and base is not r and aa and base["aa_eval"]:
                d_clean = aa["clean"]["accuracy"] - base["aa_eval"]["clean"]["accuracy"]
                d_rob = aa["robust"]["accuracy"] - base["aa_eval"]["robust"]["accuracy"]
                delta = f"{100 * d_clean:+.1f} / {100 * d_rob:+.1f}"
                if pe and base["paper_eval"]:
                    delta += f" / {100 * (pe['robust']['accuracy'] - base['paper_eval']['robust']['accuracy']):+.2f}"
            pgd = f"{_prop(pe.get('robust'))} ({pe.get('suite')}, n={pe['data']['n']})" if pe else "not run"
            passes = t["passes_per_example_per_epoch"] if t else None
            device = r["env"].get("device_name") or r["env"].get("device") or "-"
            if r["env"].get("device") == "cpu" and r["env"].get("torch_threads"):
                device += f", {int(r['env']['torch_threads'])} thread(s)"
            epochs = f"{t['epochs_run']}/{t['epochs_planned']}" if t else f"not finished ({r.get('epochs_done', 0)})"
            clean = _prop(aa.get("clean")) if aa else "not run"
            robust = f"{_prop(aa.get('robust'))} (n={aa['data']['n']}){_verdict(aa)}" if aa else "not run"
            cost = f"{passes['forward']:g} + {passes['backward']:g}" if passes else "-"
            wall = _minutes(t.get("wall_s")) if t else "-"
            lines.append(
                f"| {defense} | {dataset} | {arm or '-'} | {epochs} | {clean} | {robust} | {pgd} | {delta} | "
                f"{cost} | {wall} | {device} |"
            )
        notes.append(
            f"- {defense} on {dataset}, seed {seed}: every arm departs from the recipe in "
            + ("; ".join(shared) or "nothing")
            + ". Runs: "
            + ", ".join(f"`{r['run']}` ({r['source']})" for r in rs)
            + "."
        )
    return lines + [""] + notes + [""]


def write_doc(
    out: Path,
    doc: Path,
    co_sweep: Optional[Path] = None,
    records: Optional[Path] = None,
    ab: Optional[Tuple[Path, Optional[Path]]] = None,
) -> Path:
    """Archive the run directories under ``out`` into ``records`` (if given), then write the
    reproduction table, the A/B runs of ``ab`` (their out folder and records folder, archived
    alike) and the catastrophic-overfitting sweep in ``co_sweep`` if given and written."""
    if records is not None:
        archive(out, records)
    text = render(out, records)
    if ab is not None:
        ab_out, ab_records = ab
        if ab_records is not None:
            archive(ab_out, ab_records)
        section = ab_section(ab_out, ab_records)
        if section:
            text = text.rstrip("\n") + "\n\n" + "\n".join(section)
    section = co_sweep_section(co_sweep, doc) if co_sweep is not None else []
    if section:
        text = text.rstrip("\n") + "\n\n" + "\n".join(section)
    atomic_write_text(doc, text)
    return doc


# -- command line -------------------------------------------------------------------------------------


def parse_variants(items: Sequence[str]) -> Dict[str, str]:
    out = {}
    for item in items:
        name, sep, variant = item.partition("=")
        if not sep or not name or not variant:
            raise HarnessError(f"--variant expects DEFENSE=VARIANT, got {item!r}")
        out[name] = variant
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--defenses", default=",".join(DEFAULT_DEFENSES), help="comma-separated, trained in this order")
    p.add_argument(
        "--variant", action="append", default=[], metavar="DEFENSE=NAME", help="a recipe variant for one defense"
    )
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--epochs", type=int, default=None, help="shorten training (smoke tests); the table says so")
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--resume", action="store_true", help="continue unfinished run directories")
    p.add_argument("--eval-n", type=int, default=None, help="points for the paper's attack (default: the paper's n)")
    p.add_argument("--aa-suite", default="autoattack", help="the AutoAttack suite (harness ls suites)")
    p.add_argument("--aa-n", type=int, default=None, help="points for AutoAttack (default: the suite's n)")
    p.add_argument("--no-aa", action="store_true", help="skip the AutoAttack evaluation")
    p.add_argument("--doc", default=DEFAULT_DOC)
    p.add_argument(
        "--co-sweep",
        default=None,
        metavar="FOLDER",
        help=f"a co_sweep.py output folder to add as a section (default: {DEFAULT_CO_SWEEP} for the default --doc)",
    )
    p.add_argument(
        "--records",
        default=None,
        metavar="FOLDER",
        help="where each run's record is archived beside the page, so a row outlives its run directory "
        "(default: the page's path without .md, e.g. docs/reproductions/)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config value for every run, over the recipe (as harness run --set; the table shows it)",
    )
    p.add_argument("--tag", default="", help="ends every run's name: one arm of an A/B (with --ab)")
    p.add_argument(
        "--eval-suite", default=None, help="evaluate with this suite instead of the paper's (e.g. one suite for an A/B)"
    )
    p.add_argument(
        "--ab",
        action="store_true",
        help="the runs are an A/B arm: they go to --ab-out, their records to --ab-records, and the page shows them "
        "in the A/B section (the main table is re-rendered from --out as it is)",
    )
    p.add_argument("--ab-out", default=DEFAULT_AB_OUT, help=f"run folder of the A/B runs (default {DEFAULT_AB_OUT})")
    p.add_argument(
        "--ab-records", default=None, help="records of the A/B runs (default: the records folder's ab/ subfolder)"
    )
    p.add_argument("--render-only", action="store_true", help="only re-render the table from the run directories")
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    out, doc = Path(args.out), Path(args.doc)
    records = Path(args.records) if args.records else doc.with_suffix("")
    co_sweep = Path(args.co_sweep) if args.co_sweep else (Path(DEFAULT_CO_SWEEP) if args.doc == DEFAULT_DOC else None)
    ab_out = Path(args.ab_out)
    ab = (ab_out, Path(args.ab_records) if args.ab_records else records / "ab")
    runs_out = ab_out if args.ab else out
    try:
        if not args.render_only:
            import logging

            logging.basicConfig(level=logging.INFO, format="%(message)s")
            from harness import config as C

            variants = parse_variants(args.variant)
            sets = C.parse_set(args.set)
            defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
            plans = [
                plan_run(
                    d,
                    args.dataset,
                    seed=s,
                    variant=variants.get(d),
                    out=runs_out,
                    threads=args.threads,
                    device=args.device,
                    epochs=args.epochs,
                    eval_n=args.eval_n,
                    data_dir=args.data_dir,
                    sets=sets,
                    tag=args.tag,
                    eval_suite=args.eval_suite,
                )
                for d in defenses
                for s in seeds
            ]  # every config checked before anything trains
            for cfg in plans:
                reproduce_one(
                    cfg,
                    resume=args.resume,
                    aa_suite=None if args.no_aa else args.aa_suite,
                    aa_n=args.aa_n,
                    progress=args.progress,
                )
                write_doc(out, doc, co_sweep, records, ab)  # the table grows as runs finish
        write_doc(out, doc, co_sweep, records, ab)
    except HarnessError as e:
        sys.stderr.write(f"reproduce: error: {e}\n")
        return 2
    print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
