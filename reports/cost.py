"""The "Cost" section of a run's report: training and evaluation wall time and passes per example,
and the multiplier over the plain-training (erm) control found beside the run.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from harness.core.errors import HarnessError
from harness.core.rundir import RunDir
from reports.cells import (
    value_of,
)
from reports.load import RunInfo, device_text, fnum, load_run
from reports.table import Column, Para, Table, TableBlock, Value, text


def find_erm_control(info: RunInfo) -> Optional[RunInfo]:
    """A plain-training run beside this one (same parent folder, data set and model): the cost
    control. Same seed preferred, then the lowest seed."""
    if info.defense == "erm" or not info.path.parent.is_dir():
        return None
    found: List[RunInfo] = []
    for p in sorted(info.path.parent.iterdir()):
        if p == info.path or not (p / RunDir.CONFIG).is_file():
            continue
        try:
            cfg = json.loads((p / RunDir.CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (
            isinstance(cfg, dict)
            and cfg.get("defense") == "erm"
            and cfg.get("dataset") == info.dataset
            and cfg.get("model") == info.model
        ):
            try:
                found.append(load_run(p))
            except HarnessError:
                continue
    found = [f for f in found if f.train_wall_s()[0] is not None]
    if not found:
        return None
    found.sort(key=lambda r: (r.seed != info.seed, r.seed if r.seed is not None else 1 << 30, r.name))
    return found[0]


# size: the cost section's rows (time, examples, gradient steps, ratio to ERM) in the table's order
def cost_section(info: RunInfo, erm: Optional[RunInfo]) -> List[Any]:
    cols = [
        Column("item", "What"),
        Column("wall", "Wall time", "seconds"),
        Column("passes", "Passes / example (fwd + bwd)"),
        Column("device", "Device"),
    ]
    rows = []
    wall, source = info.train_wall_s()
    total = info.passes_total()
    pe = info.passes_per_epoch()
    so_far = "" if info.training_finished else ", so far"
    ptxt = "not counted: per-epoch rows lost" if info.metrics_damage else "—"
    if total is not None:
        ptxt = f"{total:.4g} in total"
        if pe:
            ptxt += f" ({pe[0]:.4g} + {pe[1]:.4g} per epoch)"
    rows.append(
        {
            "item": f"training, {info.epochs_run} epoch(s){so_far} ({source or 'no timing'})",
            "wall": value_of(wall),
            "passes": ptxt,
            "device": info.device,
        }
    )
    mon = info.monitor_wall_s()
    if mon is not None:
        rows.append({"item": "per-epoch val monitoring", "wall": Value(mon), "passes": "—", "device": info.device})
    tot = fnum(info.summary.wall_s)
    if tot is not None and source != "training.json total":
        rows.append(
            {"item": "training total (training.json)", "wall": Value(tot), "passes": "—", "device": info.device}
        )
    for ev in info.evaluations():
        f, b = fnum(ev.result.cost.forward_per_example), fnum(ev.result.cost.backward_per_example)
        rows.append(
            {
                "item": f"evaluation {ev.suite}, {ev.checkpoint} checkpoint (n={ev.n})",
                "wall": value_of(ev.cost_wall_s()),
                "passes": f"{f:.4g} + {b:.4g}" if f is not None and b is not None else "—",
                "device": device_text(ev.result.env, "—"),
            }
        )
    blocks: List[Any] = [TableBlock(Table.simple("", cols, rows))]
    if info.defense == "erm":
        blocks.append(
            Para(text("This run is the plain-training control: other defenses' cost multipliers are relative to it."))
        )
    elif not info.training_finished:
        blocks.append(Para(text("Multiplier over plain training: not given while training has not finished.")))
    elif erm is None:
        blocks.append(
            Para(
                text(
                    "Multiplier over plain training: no erm control run with the same data set and model was found "
                    "beside this run (harness run --defense erm gives one)."
                )
            )
        )
    else:
        ew, _ = erm.train_wall_s()
        ep = erm.passes_total()
        parts = []
        if wall is not None and ew:
            parts.append(f"{wall / ew:.1f}× the training wall time")
        if total is not None and ep:
            parts.append(f"{total / ep:.1f}× the passes per example")
        if parts:
            s = f"Multiplier over plain training: {' and '.join(parts)} of the erm control {erm.name} (seed {erm.seed})"
            if erm.device != info.device:
                s += (
                    f"; note the control ran on {erm.device}, this run on {info.device}, "
                    "so the wall-time ratio compares machines too"
                )
            blocks.append(Para(text(s + ".")))
    return blocks


def erm_multiplier(info: RunInfo, erm: Optional[RunInfo]) -> Dict[str, Any]:
    if erm is None or not info.training_finished:
        return {"control": None}
    wall, ew = info.train_wall_s()[0], erm.train_wall_s()[0]
    tp, ep = info.passes_total(), erm.passes_total()
    return {
        "control": erm.name,
        "control_seed": erm.seed,
        "wall_time": (wall / ew) if wall is not None and ew else None,
        "passes": (tp / ep) if tp is not None and ep else None,
        "same_device": erm.device == info.device,
    }
