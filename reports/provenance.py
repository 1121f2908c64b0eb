"""The "Provenance" table of a run's report: what ran, where, with which versions and config."""

from __future__ import annotations

from typing import Optional

from harness.core.documents import Document as StoredDocument
from reports.load import RunInfo
from reports.table import Column, Table


def _text(doc: Optional[StoredDocument], name: str, missing: str) -> str:
    """A stored field as text (``None`` for a stored null), or ``missing`` when the file lacks it."""
    return str(getattr(doc, name)) if doc is not None and doc.present(name) else missing


def _precision(info: RunInfo) -> str:
    """What the run trained in (env.json's resolved precision), with the config's word beside it
    when that differs (``auto`` resolves to fp32 on the CPU, bf16 or fp32 on a GPU)."""
    asked = info.config.get("precision")
    used = info.env.precision if info.env is not None and info.env.present("precision") else None
    if used is None:
        return str(asked) if asked is not None else "—"
    return used if asked in (None, used) else f"{used} (config: {asked})"


def provenance_table(info: RunInfo) -> Table:
    env = info.env
    paper = info.summary.defense.paper
    rows = [
        ("run", info.name),
        ("status", info.status),
        ("defense", info.defense),
        ("paper", str(paper) if paper is not None else "—"),
        ("data set", info.dataset),
        ("model", info.model),
        ("threat (training)", f"{info.norm} eps={info.eps_text}"),
        ("seed", str(info.seed) if info.seed is not None else "—"),
        ("device", info.device),
        ("precision", _precision(info)),
        ("harness", _text(env, "harness", "—")),
        ("git sha", str(env.git_sha or "unknown")),
        ("python", _text(env, "python", "—")),
        ("platform", _text(env, "platform", "—")),
    ]
    rows += [(k, str(v)) for k, v in env.versions.items() if v]
    rows += [("started", _text(env, "started", "—")), ("finished", str(env.finished or "—"))]
    if env.config_sources is not None:
        rows.append(("config sources", ", ".join(env.config_sources)))
    if env.argv is not None:
        rows.append(("command", " ".join(env.argv)))
    for ev in info.evaluations():
        r, e = ev.result, ev.result.env
        rows.append(
            (
                f"evaluation {ev.suite}/{ev.checkpoint}",
                f"created {_text(r, 'created', '?')}, seed {_text(r, 'seed', '?')}, device {_text(e, 'device', '?')}, "
                f"harness {_text(e, 'harness', '?')}, git sha {(e.git_sha if e is not None else None) or 'unknown'}",
            )
        )
    cols = [Column("k", "Field"), Column("v", "Value")]
    return Table.simple("", cols, [{"k": k, "v": v} for k, v in rows])
