"""``harness export RUN --format robustbench -o DIR``: a run's selected checkpoint as a RobustBench
model card, its weights as safetensors, and a loader snippet.

The card has the fields of RobustBench's leaderboard files, read from RobustBench/robustbench at
commit 78fcc9e48a07a861268f295a777b975f25155964: every ``model_info/{cifar10,cifar100,imagenet}/
{Linf,L2}/*.json`` there (188 files) has exactly ``link``, ``name``, ``authors``,
``additional_data``, ``number_forward_passes``, ``dataset``, ``venue``, ``architecture``,
``eps``, ``clean_acc``, ``reported``, ``autoattack_acc``; some add ``footnote`` (103),
``unreliable`` (147) and ``external`` (25). The same list is the ``ModelInfo`` dataclass in
``robustbench/utils.py`` (with the corruption fields), which ``update_json`` writes, and the
fields ``robustbench/leaderboard/template.py`` (``generate_leaderboard``) and
``leaderboard.html.j2`` render. Their conventions, followed here:

- accuracies are percent strings with two decimals, ``str(round(100 * acc, 2))``, as
  ``update_json`` writes them (the one place this project stores percent: it is their format);
- ``eps`` is the text as typed ("8/255"); the threat model is the folder, so the card goes to
  ``DIR/model_info/DATASET/THREAT/MODEL_ID.json``, where a pull request to RobustBench puts it;
- ``autoattack_acc``: accuracy under AutoAttack standard. Taken only from an evaluation whose
  cascade begins with all of AutoAttack standard's components (from ``pyautoattack``): the
  cumulative accuracy after the last of them is AutoAttack's own number (the harness's cascade
  equals pyautoattack's, tests/test_evaluate.py); a later attack of the suite can only lower the
  suite's worst case, which is what ``reported`` holds (our own claim);
- ``number_forward_passes``: forward passes the defended model makes per input at inference
  (RobustBench's ensembles have 2, 3 or 6); a model trained by any harness defense is one plain
  network, so 1;
- ``additional_data``: false (harness trains on the data set's own training split);
- ``unreliable``: RobustBench's "AA eval. potentially unreliable" flag; here true unless the
  harness's sanity checks judged the evaluation reliable (absent when no checks ran: their
  template then shows "Unknown").

RobustBench evaluates on the full test set (10,000 points on CIFAR); when n is smaller the
``footnote`` says so, with the suite and n. An evaluation whose verdict is ``unreliable`` is
refused (``HarnessError``, exit 2) unless ``force``, and the card then says it was forced.
Everything the leaderboard fields cannot carry (fractions with their 95% intervals, n, suite,
seed, checkpoint epoch, verdict and reasons, the weights' SHA-256) is in the card's ``harness``
object, which RobustBench's readers ignore.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from attacks.autoattack import version_components
from harness.checkpoints import file_sha256, load_into, save_weights, state_dict_of
from harness.core.documents import EvalResult, Proportion
from harness.core.errors import HarnessError
from harness.core.io import atomic_write_text
from harness.core.rundir import RunDir, now_iso
from harness.data import load_dataset
from harness.evaluation import Checkpoint
from harness.models import model_for
from harness.spec import RunSpec

log = logging.getLogger("harness.export")

# the fields every RobustBench Linf / L2 leaderboard file has, and the optional ones (see above)
ROBUSTBENCH_FIELDS = (
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "autoattack_acc",
)
ROBUSTBENCH_OPTIONAL = ("footnote", "unreliable", "external")

# RobustBench's architecture names for ours (their spelling: "PreActResNet-18", "WideResNet-28-10")
ARCHITECTURES = {
    "small-cnn": "SmallCNN (conv 4x4x16 s2, conv 4x4x32 s2, FC 100)",
    "preact-resnet18": "PreActResNet-18",
    "wrn-28-10": "WideResNet-28-10",
    "wrn-34-10": "WideResNet-34-10",
}
# the full test split of the data sets RobustBench benchmarks (its leaderboards use all of it)
ROBUSTBENCH_DATASETS = ("cifar10", "cifar100", "imagenet")


def percent(accuracy: float) -> str:
    """RobustBench's accuracy text: ``str(round(accuracy * 100, 2))`` as ``update_json`` writes it."""
    return str(round(float(accuracy) * 100, 2))


def autoattack_stage(result: EvalResult) -> Optional[Tuple[Proportion, List[str]]]:
    """``(accuracy after AutoAttack standard, components)`` if the result's cascade begins with
    every component of AutoAttack standard from pyautoattack, else None."""
    want = list(version_components("standard", result.threat.norm or "Linf"))
    head = result.attacks[: len(want)]
    names = [str(a.name) for a in head]
    ok = names == want and all(
        a.descriptor.get("library") == "pyautoattack" and a.descriptor.get("autoattack_version") == "standard"
        for a in head
    )
    if not ok or not head[-1].after.measured:
        return None
    return head[-1].after, names


def pick_result(run: RunDir, checkpoint: str, suite: Optional[str]) -> EvalResult:
    """The evaluation of ``checkpoint`` to export: one that ran AutoAttack standard first; the
    named suite if given, else the run's own suite first, then the largest n."""
    cfg = run.read_config()
    found, others = [], []
    errors: List[str] = []
    for s, ck, res in run.results(errors):
        if ck != checkpoint or (suite is not None and s != suite):
            continue
        (found if autoattack_stage(res) is not None else others).append((s, res))
    damaged = [e for e in errors if _is_result_of(e, run, checkpoint, suite)]
    if not found:
        what = f"suite {suite!r}" if suite else "any suite"
        suites = ", ".join(sorted({s for s, _ in others}))
        seen = f" (evaluated with {suites}, none running AutoAttack standard first)" if others else ""
        if damaged:  # the evaluation may be there, unreadable: name the file rather than say none ran
            raise HarnessError(
                f"{run.path}: the result file of checkpoint {checkpoint!r} is damaged ({'; '.join(damaged)}); "
                f"evaluate again with harness eval {run.path} --checkpoint {checkpoint} --suite standard "
                "(or quick) --force"
            )
        raise HarnessError(
            f"{run.path}: no evaluation of checkpoint {checkpoint!r} with {what} ran AutoAttack "
            f"standard{seen}; RobustBench's number is AutoAttack's: run harness eval {run.path} "
            f"--checkpoint {checkpoint} --suite standard (or quick) first"
        )
    for e in damaged:
        log.warning("export: skipped a damaged result file: %s", e)
    own = (cfg.get("eval") or {}).get("suite")
    found.sort(key=lambda sr: (sr[0] != own, -int(sr[1].n or 0)))
    return found[0][1]


def _verdict(result: EvalResult) -> Tuple[str, List[str]]:
    """The evaluation's verdict once its adaptive stage resolved what it could, with the reasons."""
    return str(result.final_verdict or "not run"), result.final_reasons


def _is_result_of(error: str, run: RunDir, checkpoint: str, suite: Optional[str]) -> bool:
    """Whether an ``eval_results`` error line is about a result file of ``checkpoint`` (and ``suite``)."""
    path = error.split(":", 1)[0]
    stem = Path(path).stem
    s, _, ck = stem.partition("--")
    return Path(path).parent == run.eval_dir and ck == checkpoint and (suite is None or s == suite)


def training_state(run: RunDir) -> Mapping[str, Any]:
    """Whether the run finished training, read from its files: ``finished`` (training.json is
    written when training ends, early stops included), the ``status`` in env.json, and the
    ``epochs`` trained of those ``planned``. A damaged env.json is a ``HarnessError`` naming it."""
    try:
        env = run.read_env()
    except HarnessError as e:
        raise HarnessError(f"{e}; the run's status cannot be read: restore env.json, or pass --force") from None
    cfg = run.read_config()
    planned = (cfg.get("train") or {}).get("epochs")
    rows = run.read_metrics()
    return {
        "finished": run.training_path.exists(),
        "status": env.get("status", "unknown"),
        "epochs": max((int(r["epoch"]) for r in rows), default=0),
        "planned": planned,
    }


def _load_weights(
    run: RunDir, cfg: Mapping[str, Any], checkpoint: str, result: EvalResult
) -> Tuple[Dict[str, Any], Any, int]:
    """The checkpoint's state dict in the run's architecture, the data bundle, and its epoch.
    Refuses weights that are not the ones evaluated (the result's weights digest, or its epoch
    for results older than digests, differs)."""
    ck = Checkpoint(run, checkpoint)
    digest = result.weights_sha256
    evaluated_epoch = result.checkpoint_epoch
    if (digest is not None and digest != ck.sha256) or (evaluated_epoch is not None and evaluated_epoch != ck.epoch):
        raise HarnessError(
            f"{ck.path} holds other weights than the {result.suite} evaluation of {checkpoint} "
            f"(epoch {ck.epoch} now, {evaluated_epoch} evaluated): re-evaluate with harness eval "
            f"{run.path} --checkpoint {checkpoint} --force before exporting"
        )
    d = cfg["data"]
    bundle = load_dataset(
        cfg["dataset"],
        data_dir=d.get("data_dir"),
        val_size=d.get("val_size"),
        split_seed=d.get("split_seed", 0),
        download=d.get("download", True),
        device="cpu",
        split=d.get("split", "random"),
    )
    with torch.device("cpu"):
        # the run's input normalisation (model_options.normalize) included
        model = model_for(RunSpec.from_config(cfg).model, bundle)
    load_into(model, ck.state, source=str(ck.path))
    return state_dict_of(model.eval()), bundle, int(ck.epoch) if ck.epoch is not None else -1


def _model_id(run: RunDir) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run.path.name).strip("_") or "harness_model"


def _notes(result: EvalResult, dataset: str, n: int, test_size: int, verdict: str, reasons: List[str]) -> List[str]:
    """What a reader of the card must know that RobustBench's fields cannot say."""
    notes: List[str] = []
    if n < test_size:
        notes.append(
            f"Evaluated on the first {n} of the {test_size} test points (suite {result.suite}, seed "
            f"{result.seed}); RobustBench evaluates on the full test set."
        )
    if dataset not in ROBUSTBENCH_DATASETS:
        notes.append(f"Data set {dataset}: RobustBench's leaderboards cover {', '.join(ROBUSTBENCH_DATASETS)} only.")
    if verdict == "unreliable":
        notes.append(
            "Exported with --force although harness's sanity checks judged this evaluation unreliable: "
            + "; ".join(reasons)
            + "."
        )
    elif verdict == "suspicious":
        notes.append("harness's sanity checks found this evaluation suspicious: " + "; ".join(reasons) + ".")
    elif verdict == "not run":
        notes.append("No gradient-masking sanity checks ran with this evaluation.")
    return notes


# size: RobustBench's free-text fields (name, link, authors, venue) are the card's own keywords
def _card(
    cfg: Mapping[str, Any],
    result: EvalResult,
    threat: Mapping[str, Any],
    defense: Mapping[str, Any],
    *,
    name: Optional[str],
    link: str,
    authors: str,
    venue: str,
    notes: List[str],
    verdict: str,
) -> Dict[str, Any]:
    """RobustBench's model_info fields, in its files' order (robustbench/utils.py ModelInfo)."""
    aa, _ = autoattack_stage(result)  # type: ignore[misc]  # pick_result guarantees it
    card: Dict[str, Any] = {
        "link": link,
        "name": name
        or (f"{defense.get('title') or cfg['defense']} on {cfg['dataset']}, trained and evaluated with harness"),
        "authors": authors,
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": cfg["dataset"],
        "venue": venue,
        "architecture": ARCHITECTURES.get(cfg["model"], cfg["model"]),
        "eps": str(threat.get("eps")),
        "clean_acc": percent(result.clean.accuracy),  # type: ignore[arg-type]
        "reported": percent(result.robust.accuracy),  # type: ignore[arg-type]
        "autoattack_acc": percent(aa.accuracy),  # type: ignore[arg-type]
    }
    if notes:
        card["footnote"] = " ".join(notes)
    if verdict in ("reliable", "suspicious", "unreliable"):
        card["unreliable"] = verdict != "reliable"
    return card


# size: the keyword options are the card's free-text fields (RobustBench's name, link, authors, venue)
def export_robustbench(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str = "best",
    suite: Optional[str] = None,
    model_id: Optional[str] = None,
    name: Optional[str] = None,
    link: str = "",
    authors: str = "",
    venue: str = "",
    force: bool = False,
) -> Dict[str, Path]:
    """Write the card, the weights and the loader into ``out_dir``; return their paths.

    ``DIR/model_info/DATASET/THREAT/MODEL_ID.json`` (the card), ``DIR/MODEL_ID.safetensors``
    (the checkpoint's weights, Normalize layer included: inputs in [0,1]), ``DIR/load_model.py``
    (builds the architecture, loads the weights) and ``DIR/README.md``. Nothing is written when
    the export is refused."""
    run = RunDir.open(run_dir)
    with run.lock("harness export"):  # a run being trained or evaluated is refused, naming its owner
        return _export(run, Path(out_dir), checkpoint, suite, model_id, name, link, authors, venue, force)


# size: the export's steps in order (pick, check, load, write card, weights, loader, readme), one place
def _export(
    run: RunDir,
    out: Path,
    checkpoint: str,
    suite: Optional[str],
    model_id: Optional[str],
    name: Optional[str],
    link: str,
    authors: str,
    venue: str,
    force: bool,
) -> Dict[str, Path]:
    cfg = run.read_config()
    try:
        training = training_state(run)
    except HarnessError as e:
        if not force:
            raise
        training = {"finished": run.training_path.exists(), "status": f"unknown ({e})", "epochs": None}
        training["planned"] = (cfg.get("train") or {}).get("epochs")
    if not training["finished"] and not force:
        raise HarnessError(
            f"{run.path}: the run is unfinished ({_progress(training)}); a leaderboard card describes a trained "
            f"model: finish it (harness run --resume {run.path}), or pass --force to export it marked as unfinished"
        )
    result = pick_result(run, checkpoint, suite)
    verdict, reasons = _verdict(result)
    if verdict == "unreliable" and not force:
        raise HarnessError(
            f"the {result.suite} evaluation of {checkpoint} is unreliable "
            f"({'; '.join(reasons[:2]) or 'see its checks'}); a leaderboard number needs a reliable "
            "evaluation: fix the model or the evaluation, or pass --force to export it marked as "
            "unreliable"
        )
    state, bundle, epoch = _load_weights(run, cfg, checkpoint, result)
    threat = result.threat.to_json() if result.threat.norm else dict(cfg["threat"])
    n = int(result.n or result.clean.n or 0)
    test_size = len(bundle.test)
    model_id = model_id or _model_id(run)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_id):
        raise HarnessError(f"--model-id {model_id!r}: use letters, digits, '_', '-' and '.' (RobustBench's file names)")
    defense = (run.read_training() or {}).get("defense") or {}
    notes = _notes(result, cfg["dataset"], n, test_size, verdict, reasons)
    if not training["finished"]:
        notes.insert(0, f"Exported with --force from an unfinished run ({_progress(training)}).")

    card = _card(
        cfg,
        result,
        threat,
        defense,
        name=name,
        link=link,
        authors=authors,
        venue=venue,
        notes=notes,
        verdict=verdict,
    )

    weights = out / f"{model_id}.safetensors"
    card_path = out / "model_info" / cfg["dataset"] / str(threat.get("norm")) / f"{model_id}.json"
    save_weights(
        weights,
        state,
        metadata={
            "run": str(run.path.name),
            "checkpoint": checkpoint,
            "epoch": str(epoch),
            "model": cfg["model"],
            "inputs": "[0,1] images, normalisation inside the model",
        },
    )
    card["harness"] = _provenance(
        run,
        cfg,
        result,
        checkpoint,
        epoch,
        threat,
        bundle,
        weights,
        defense,
        forced=bool(force and (verdict == "unreliable" or not training["finished"])),
    )
    card["harness"]["training"] = training
    # RobustBench's files are plain JSON without our schema keys; written atomically all the same
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    loader = out / "load_model.py"
    normalize = (cfg.get("model_options") or {}).get("normalize", "dataset")
    atomic_write_text(loader, _loader_text(model_id, cfg["model"], bundle, run, checkpoint, epoch, normalize))
    readme = out / "README.md"
    atomic_write_text(readme, _readme_text(model_id, card, card_path.relative_to(out), weights.name))
    return {"card": card_path, "weights": weights, "loader": loader, "readme": readme}


def _progress(training: Mapping[str, Any]) -> str:
    """``status interrupted, 5 of 20 epochs trained``."""
    epochs, planned = training.get("epochs"), training.get("planned")
    trained = f"{epochs} of {planned} epochs trained" if epochs is not None else "epochs trained unknown"
    return f"status {training.get('status')}, {trained}"


# size: the facts an exported card records beside RobustBench's fields, each from its own source
def _provenance(
    run: RunDir,
    cfg: Mapping[str, Any],
    result: EvalResult,
    checkpoint: str,
    epoch: int,
    threat: Mapping[str, Any],
    bundle: Any,
    weights: Path,
    defense: Mapping[str, Any],
    *,
    forced: bool,
) -> Dict[str, Any]:
    """The card's ``harness`` object (RobustBench's readers ignore it): where the numbers come from."""
    verdict, reasons = _verdict(result)
    aa, components = autoattack_stage(result)  # type: ignore[misc]
    n = int(result.n or result.clean.n or 0)
    return {
        "run": str(run.path),
        "checkpoint": checkpoint,
        "checkpoint_epoch": epoch,
        "model": cfg["model"],
        "defense": cfg["defense"],
        "paper": defense.get("paper"),
        "threat": {"norm": threat.get("norm"), "eps": threat.get("eps"), "eps_value": threat.get("eps_value")},
        "suite": result.suite,
        "n": n,
        "test_size": len(bundle.test),
        "subset": result.data.subset,
        "seed": result.seed,
        "clean": result.clean.to_json(),
        "autoattack": {**aa.to_json(), "components": components},
        "robust": result.robust.to_json(),
        "verdict": verdict,
        "reasons": reasons,
        "forced": forced,
        "weights": {"file": weights.name, "sha256": file_sha256(weights)},
        "input": {
            "shape": list(bundle.shape),
            "num_classes": bundle.num_classes,
            "mean": list(bundle.mean),
            "std": list(bundle.std),
            "range": "[0,1]",
            "normalize": (cfg.get("model_options") or {}).get("normalize", "dataset"),
        },
        "exported": now_iso(),
    }


def _loader_text(
    model_id: str, model: str, bundle: Any, run: RunDir, checkpoint: str, epoch: int, normalize: str = "dataset"
) -> str:
    shape = tuple(int(s) for s in bundle.shape)
    return f'''"""Load {model_id}: checkpoint {checkpoint} (epoch {epoch}) of the harness run {run.path.name}.

The model takes images in [0,1] of shape (N, {shape[0]}, {shape[1]}, {shape[2]}) and returns logits over
{bundle.num_classes} classes; its normalisation is its first layer, inside the weights. The weights are
safetensors (data, never code). Needs harness installed for the architecture:

    python load_model.py
"""
from pathlib import Path

from safetensors.torch import load_file

from harness.models import build_model

WEIGHTS = Path(__file__).with_name("{model_id}.safetensors")


def load_model():
    model = build_model({model!r}, {shape!r}, {bundle.num_classes},
                        mean={tuple(bundle.mean)!r}, std={tuple(bundle.std)!r}, normalize={normalize!r})
    model.load_state_dict(load_file(str(WEIGHTS)))
    return model.eval()


if __name__ == "__main__":
    import torch

    net = load_model()
    print(net(torch.rand(2, *{shape!r})).shape)
'''


def _readme_text(model_id: str, card: Mapping[str, Any], card_rel: Path, weights: str) -> str:
    h = card["harness"]
    lines = [f"# {model_id}", "", card["name"], "", "| field | value |", "|---|---|"]
    for k in ROBUSTBENCH_FIELDS + ROBUSTBENCH_OPTIONAL:
        if k in card:
            lines.append(f"| {k} | {json.dumps(card[k]) if not isinstance(card[k], str) else card[k]} |")
    lines += [
        "",
        f"Evaluated with the harness suite `{h['suite']}` on the first {h['n']} of {h['test_size']} "
        f"test points (seed {h['seed']}); AutoAttack standard ({', '.join(h['autoattack']['components'])}) "
        f"from pyautoattack; sanity-check verdict: {h['verdict']}.",
        "",
        "## Files",
        "",
        f"- `{card_rel.as_posix()}`: the RobustBench model card (their `model_info/DATASET/THREAT/ID.json` layout)",
        f"- `{weights}`: the weights (safetensors, Normalize layer included: inputs in [0,1])",
        "- `load_model.py`: builds the architecture and loads the weights",
        "",
        "```python",
        "from load_model import load_model",
        "model = load_model()  # eval mode, takes [0,1] images",
        "```",
        "",
    ]
    return "\n".join(lines)


def export_command(args: Any) -> int:
    """``harness export``: write the export, print where it went."""
    import sys

    if args.format != "robustbench":
        raise HarnessError(f"unknown export format {args.format!r}; use robustbench")
    paths = export_robustbench(
        args.run_dir,
        args.output,
        checkpoint=args.checkpoint,
        suite=args.suite,
        model_id=args.model_id,
        name=args.title,
        link=args.link or "",
        authors=args.authors or "",
        venue=args.venue or "",
        force=args.force,
    )
    card = json.loads(paths["card"].read_text())
    sys.stdout.write(
        f"RobustBench card {paths['card']}: clean {card['clean_acc']}%, "
        f"AutoAttack {card['autoattack_acc']}% (n={card['harness']['n']}, "
        f"verdict {card['harness']['verdict']})\n"
    )
    for key in ("weights", "loader", "readme"):
        sys.stdout.write(f"  {key}: {paths[key]}\n")
    return 0
