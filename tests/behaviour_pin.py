"""What a run produces, reduced to digests that must not move when the code is only reorganised.

``digests(defense, out)`` trains ``defense`` on digits for two epochs (one thread, seed 0), selects
on val, evaluates best and last with the smoke suite, and returns one SHA-256 per artefact: the
weights of every checkpoint, each metrics row, training.json, checkpoints/best.json and each eval
result, with the fields that record when or how long (wall times, timestamps, the environment)
taken out. tests/test_behaviour.py compares them with tests/golden/behaviour.json, recorded before
the typed-spine refactor (issue 23): the same seed must give bit-identical weights, metrics and
results. A deliberate change of behaviour (a recipe made faithful to its paper, say) re-records
the affected defense with ``python tests/behaviour_pin.py --record DEFENSE`` and says why in its
commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Dict

import torch

GOLDEN = Path(__file__).parent / "golden" / "behaviour.json"
VOLATILE = {"wall_s", "created", "env", "time", "started", "finished", "train_wall_s", "val_wall_s"}
VOLATILE_SUFFIXES = ("wall_s", "wall_s_per_epoch")


def _strip(doc: Any) -> Any:
    if isinstance(doc, dict):
        kept = [k for k in doc if k not in VOLATILE and not k.endswith(VOLATILE_SUFFIXES)]
        return {k: _strip(doc[k]) for k in kept}
    if isinstance(doc, list):
        return [_strip(v) for v in doc]
    return doc


def _digest_json(doc: Any) -> str:
    return hashlib.sha256(json.dumps(_strip(doc), sort_keys=True).encode()).hexdigest()[:20]


def _digest_state(state: Dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def digests(defense: str, out: Path) -> Dict[str, str]:
    import harness
    from harness.checkpoints import load_resume, load_state_dict_file

    run = harness.train(
        defense,
        dataset="digits",
        device="cpu",
        threads=1,
        seed=0,
        epochs=2,
        suite="smoke",
        n=64,
        out=str(out),
        name=f"pin-{defense}",
        progress=False,
        monitor={"val_n": 100},
    )
    path = Path(run.path)
    got: Dict[str, str] = {}
    for i, line in enumerate((path / "metrics.jsonl").read_text().splitlines()):
        got[f"metrics[{i}]"] = _digest_json(json.loads(line))
    got["training.json"] = _digest_json(json.loads((path / "training.json").read_text()))
    got["checkpoints/best.json"] = _digest_json(json.loads((path / "checkpoints" / "best.json").read_text()))
    got["weights/last"] = _digest_state(load_resume(run.dir.checkpoint_path("last"))["model"])
    got["weights/best"] = _digest_state(load_state_dict_file(run.dir.checkpoint_path("best")))
    for f in sorted((path / "eval").glob("*.json")):
        got[f"eval/{f.name}"] = _digest_json(json.loads(f.read_text()))
    return got


def main(argv: Any = None) -> int:
    import argparse
    import tempfile

    from defenses.registry import DEFENSES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--record", nargs="*", metavar="DEFENSE", help="defenses to (re-)record; none: all")
    args = p.parse_args(argv)
    names = args.record or DEFENSES.names()
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            golden[name] = digests(name, Path(tmp))
            print(name, golden[name]["weights/last"], file=sys.stderr)
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(dict(sorted(golden.items())), indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
