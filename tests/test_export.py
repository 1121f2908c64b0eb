"""`harness export RUN --format robustbench`: the card has every field of RobustBench's leaderboard
files with the run's numbers, the weights load back with equal outputs, and an unreliable or
missing AutoAttack evaluation is refused. A digits run (plain training, one epoch) evaluated
with the quick suite (AutoAttack standard from pyautoattack, then PGD-20) on 32 points."""

from __future__ import annotations

import dataclasses
import json
import runpy
import shutil

import pytest
import torch

from harness import config as C
from harness.checkpoints import file_sha256
from harness.cli import main
from harness.core.rundir import RunDir
from harness.evaluation import Checkpoint
from harness.pipeline import run_pipeline

# The fields every leaderboard file has, from RobustBench/robustbench at commit
# 78fcc9e48a07a861268f295a777b975f25155964: all 188 files model_info/{cifar10,cifar100,imagenet}/{Linf,L2}/*.json
# carry exactly these 12 (e.g. model_info/cifar10/Linf/Wong2020Fast.json); footnote, unreliable and
# external are optional. Written out here, not imported from harness.export, so the test checks it.
RB_FIELDS = {
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
}
RB_OPTIONAL = {"footnote", "unreliable", "external"}
N = 32


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    cfg = C.resolve(
        {
            "defense": "erm",
            "dataset": "digits",
            "device": "cpu",
            "threads": 1,
            "train": {"epochs": 1},
            "threat": {"eps": "0.3"},  # AutoAttack breaks most points at once: seconds, not minutes
            "monitor": {"val_n": 100},
            "eval": {"suite": "quick", "n": N, "checkpoints": ["best"]},
            "out": {"root": str(tmp), "name": "erm-digits"},
        }
    )
    run_pipeline(cfg, progress=False)
    return RunDir(tmp / "erm-digits")


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("card")
    assert (
        main(
            [
                "export",
                str(run.path),
                "--format",
                "robustbench",
                "-o",
                str(out),
                "--model-id",
                "Harness2026Digits",
                "--authors",
                "A. Person, B. Person",
                "--venue",
                "arXiv 2026",
            ]
        )
        == 0
    )
    (card_path,) = (out / "model_info" / "digits" / "Linf").glob("*.json")
    return out, card_path, json.loads(card_path.read_text())


def test_the_card_has_every_robustbench_field_with_the_runs_values(run, exported):
    out, card_path, card = exported
    assert card_path.name == "Harness2026Digits.json"
    assert RB_FIELDS <= set(card) and set(card) <= RB_FIELDS | RB_OPTIONAL | {"harness"}
    # robustbench 1.1.1's own record of a card (utils.ModelInfo, what its update_json writes) takes them
    from harness.robustbench_compat import robustbench

    robustbench()
    from robustbench.utils import ModelInfo

    assert RB_FIELDS | {"footnote"} <= {f.name for f in dataclasses.fields(ModelInfo)}
    ModelInfo(**{k: card[k] for k in RB_FIELDS | {"footnote"}})
    # their readers turn the accuracy strings into fractions as float(x) / 100 (utils.list_available_models)
    res = run.read_eval_result("quick", "best")
    cfg = run.read_config()
    assert float(card["clean_acc"]) / 100 == pytest.approx(res["clean"]["accuracy"], abs=5e-5)
    assert card["clean_acc"] == str(round(res["clean"]["accuracy"] * 100, 2))
    aa = [a for a in res["attacks"] if a["descriptor"].get("library") == "pyautoattack"]
    first_four = [a["name"] for a in res["attacks"][:4]]
    assert [a["name"] for a in aa] == ["apgd-ce", "apgd-t", "fab-t", "square"] == first_four
    assert card["autoattack_acc"] == str(round(aa[-1]["after"]["accuracy"] * 100, 2))
    assert card["reported"] == str(round(res["robust"]["accuracy"] * 100, 2))
    assert card["eps"] == cfg["threat"]["eps"] and card["dataset"] == "digits"
    assert card["additional_data"] is False and card["number_forward_passes"] == 1
    assert card["architecture"].startswith("SmallCNN")
    assert card["authors"] == "A. Person, B. Person" and card["venue"] == "arXiv 2026"
    assert card["unreliable"] is (res["checks"]["verdict"] != "reliable")
    h = card["harness"]
    test_size = h["test_size"]
    assert h["n"] == N < test_size and f"first {N} of the {test_size} test points" in card["footnote"]
    assert h["suite"] == "quick" and h["verdict"] == res["checks"]["verdict"] and h["forced"] is False
    assert h["checkpoint_epoch"] == run.read_checkpoint_meta("best")["epoch"] == res["checkpoint_epoch"]
    assert h["weights"]["sha256"] == file_sha256(out / "Harness2026Digits.safetensors")


def test_the_weights_load_back_into_the_architecture_with_equal_outputs(run, exported):
    out, _, _ = exported
    loaded = runpy.run_path(str(out / "load_model.py"))["load_model"]()
    from trained_models import bundle

    from harness.models import build_model

    data = bundle("digits")
    reference = build_model("small-cnn", data.shape, data.num_classes, data.mean, data.std)
    reference.load_state_dict(Checkpoint(run, "best").state)
    reference.eval()
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
    assert not loaded.training and "load_model" in (out / "README.md").read_text()


def _copy_with_verdict(run, tmp_path, verdict, **edit):
    dst = tmp_path / "copy"
    shutil.copytree(run.path, dst)
    p = dst / "eval" / "quick--best.json"
    doc = json.loads(p.read_text())
    reasons = ["fgsm-vs-pgd: FGSM beats PGD (simulated)"] if verdict != "reliable" else []
    doc["checks"]["verdict"], doc["checks"]["reasons"] = verdict, reasons
    if doc.get("adaptive"):  # the verdict after the adaptive stage is the one a card reports
        doc["adaptive"]["verdict"], doc["adaptive"]["reasons"] = verdict, reasons
    doc.update(edit)
    p.write_text(json.dumps(doc))
    return dst


def test_an_unreliable_verdict_is_refused_unless_forced(run, tmp_path, capsys):
    src = _copy_with_verdict(run, tmp_path, "unreliable")
    out = tmp_path / "out"
    code = main(["export", str(src), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unreliable" in err and "--force" in err
    assert not out.exists()
    assert main(["export", str(src), "-o", str(out), "--force"]) == 0
    (card_path,) = out.glob("model_info/digits/Linf/*.json")
    card = json.loads(card_path.read_text())
    assert card["unreliable"] is True and card["harness"]["forced"] is True
    assert "Exported with --force" in card["footnote"] and "FGSM beats PGD (simulated)" in card["footnote"]


def test_a_run_without_autoattack_or_with_other_weights_is_refused(run, tmp_path, capsys):
    code = main(["export", str(run.path), "-o", str(tmp_path / "a"), "--suite", "smoke"])
    err = capsys.readouterr().err
    assert code == 2 and "ran AutoAttack standard" in err and "--suite standard" in err
    # weights of another epoch than the one evaluated (best moved on after the evaluation)
    src = _copy_with_verdict(run, tmp_path, "reliable", weights_sha256="0" * 64)
    code = main(["export", str(src), "-o", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "holds other weights than the quick evaluation" in err and not (tmp_path / "b").exists()


# -- unfinished and damaged runs (issue 25) ----------------------------------------------------------


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory):
    """A run stopped after epoch 1 of 3 (as a kill would leave it: no training.json), then
    evaluated with AutoAttack by ``harness eval``: everything an export needs, but unfinished."""
    from harness.api import evaluate_run

    tmp = tmp_path_factory.mktemp("unfinished")
    cfg = C.resolve(
        {
            "defense": "erm",
            "dataset": "digits",
            "device": "cpu",
            "threads": 1,
            "train": {"epochs": 3},
            "threat": {"eps": "0.3"},
            "monitor": {"val_n": 100},
            "eval": {"suite": "quick", "n": N, "checkpoints": ["best"]},
            "out": {"root": str(tmp), "name": "cut"},
        }
    )

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, progress=False, on_epoch_end=stop)
    evaluate_run(tmp / "cut", checkpoints=["best"], suite="quick", n=N)
    return RunDir(tmp / "cut")


def test_an_unfinished_run_is_refused_unless_forced_and_the_card_says_so(unfinished, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["export", str(unfinished.path), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "the run is unfinished (status interrupted, 1 of 3 epochs trained)" in err and "--force" in err
    assert not out.exists()
    assert main(["export", str(unfinished.path), "-o", str(out), "--force"]) == 0
    (card_path,) = out.glob("model_info/digits/Linf/*.json")
    card = json.loads(card_path.read_text())
    assert card["footnote"].startswith("Exported with --force from an unfinished run (status interrupted, 1 of 3")
    assert card["harness"]["forced"] is True
    assert card["harness"]["training"] == {"finished": False, "status": "interrupted", "epochs": 1, "planned": 3}


def test_a_damaged_env_json_is_named_in_one_line(run, tmp_path, capsys):
    src = tmp_path / "copy"
    shutil.copytree(run.path, src)
    (src / "env.json").write_text('{"schema": "env", "status": "fini')
    out = tmp_path / "out"
    code = main(["export", str(src), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{src / 'env.json'}: not valid JSON" in err, err
    assert not out.exists()
    assert main(["export", str(src), "-o", str(out), "--force"]) == 0
    (card_path,) = out.glob("model_info/digits/Linf/*.json")
    assert "env.json: not valid JSON" in json.loads(card_path.read_text())["harness"]["training"]["status"]


def test_a_truncated_autoattack_result_is_named_not_reported_missing(run, tmp_path, capsys):
    src = tmp_path / "copy"
    shutil.copytree(run.path, src)
    result = src / "eval" / "quick--best.json"
    result.write_bytes(result.read_bytes()[:1000])
    code = main(["export", str(src), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"the result file of checkpoint 'best' is damaged ({result}: not valid JSON" in err
    assert "no evaluation" not in err
