"""`harness audit`: verdicts on claims, checkpoints as data (hostile pickles refused, key
mismatches listed), model files that fail to import, the guard rails, and RobustBench names with
weights from a local model directory. Digits / generated data, the smoke suite, no network."""

from __future__ import annotations

import builtins
import json
import pickle
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from trained_models import bundle, points, trained

from harness.audit.claim import parse_claim, parse_claim_attack, replay_spec
from harness.audit.guards import AuditRefused, guard_rails, sign_test
from harness.audit.verdict import decide
from harness.checkpoints import save_weights
from harness.cli import main
from harness.core.documents import ChecksBlock, Proportion
from harness.core.errors import ConfigError, UnknownNameError
from harness.core.threat import ThreatModel

EPS = "0.05"
BASE = ["audit", "--dataset", "digits", "--eps", EPS, "--suite", "smoke", "--n", "32"]

MODEL_FILE = textwrap.dedent('''
    """A reviewer's model file: the harness's small CNN, with and without its Normalize layer."""
    from torch import nn
    from harness.models import NormalizedModel, small_cnn


    def wrapped(num_classes, shape, mean, std):
        return NormalizedModel(small_cnn(shape, num_classes), mean, std)


    def bare(num_classes, shape):
        """The network alone: trained behind Normalize, it expects normalised input."""
        return small_cnn(shape, num_classes)


    class Probabilities(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x).softmax(1)


    def probs(num_classes, shape, mean, std):
        return Probabilities(NormalizedModel(small_cnn(shape, num_classes), mean, std))
''')


@pytest.fixture(scope="module")
def model():
    return trained("digits", adversarial=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory, model):
    d = tmp_path_factory.mktemp("audit")
    (d / "models.py").write_text(MODEL_FILE)
    save_weights(d / "w.safetensors", model)
    torch.save(model.net.state_dict(), d / "net.pt")  # a plain state dict, as most papers release
    return d


def _audit(argv, capsys):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def overstated(files):
    """One audit through the CLI of a claim far above what the model can have (99%)."""
    out = files / "overstated"
    code = main(
        BASE
        + [
            "--model",
            "small-cnn",
            "--checkpoint",
            str(files / "w.safetensors"),
            "--claim",
            "0.99",
            "--claim-attack",
            "PGD-20",
            "--out",
            str(out),
        ]
    )
    return code, out, json.loads((out / "audit.json").read_text())


# -- verdicts ----------------------------------------------------------------------------------


def test_claim_above_the_measurement_is_overstated_by_the_gap(overstated):
    code, out, doc = overstated
    assert code == 1
    assert doc["schema"] == "audit" and doc["schema_version"] == 1
    v = doc["verdict"]
    m = doc["measured"]
    assert v["outcome"] == "overstated"
    assert m["n"] == 32 and m["ci95"][1] < 0.99
    assert v["gap_points"] == pytest.approx(100 * (0.99 - m["accuracy"]))
    assert f"overstated by {v['gap_points']:.1f} points" in v["text"]
    # the suite's own number is embedded, and measured is no higher than it (the replay can only lower it)
    assert doc["eval"]["robust"]["n"] == 32 and m["accuracy"] <= doc["eval"]["robust"]["accuracy"]
    assert doc["strength"]["claimed"]["replayed"]["label"] == "PGD-20 CE"
    md = (out / "audit.md").read_text()
    assert f"overstated by {v['gap_points']:.1f} points" in md and "PGD-20" in md and "| harness: PGD-20 CE |" in md
    page = (out / "audit.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "overstated" in page
    assert "http" not in page and "<script" not in page and "<link" not in page  # self-contained


def test_true_claim_holds(overstated, files, capsys):
    measured = overstated[2]["measured"]["accuracy"]
    code, out, err = _audit(
        BASE
        + [
            "--model",
            "small-cnn",
            "--checkpoint",
            str(files / "w.safetensors"),
            "--claim",
            f"{100 * measured:.4f}%",
            "--claim-attack",
            "PGD-20",
            "--out",
            str(files / "holds"),
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((files / "holds" / "audit.json").read_text())
    assert doc["verdict"]["outcome"] == "holds"
    assert doc["measured"]["accuracy"] == measured  # same seed, same points: same number
    assert out.startswith("audit: CLAIM HOLDS")


def test_verdict_rule_boundaries():
    robust = Proportion.of(40, 100)  # 40%, Wilson CI about [30.9%, 49.8%]
    hi = robust.ci95[1]
    ok = ChecksBlock("reliable", [])
    assert decide(hi, robust, ok).outcome == "holds"
    assert decide(0.30, robust, ok).outcome == "holds" and "conservative" in decide(0.30, robust, ok).text
    over = decide(hi + 0.001, robust, ok).to_json()
    assert over["outcome"] == "overstated" and over["gap_points"] == pytest.approx(100 * (hi + 0.001 - 0.40))
    bad = decide(0.40, robust, ChecksBlock("unreliable", ["FGSM beats PGD on 12% of points"])).to_json()
    assert bad["outcome"] == "unreliable" and "FGSM beats PGD" in bad["text"]
    sus = decide(0.40, robust, ChecksBlock("suspicious", ["loss not converged"])).to_json()
    assert sus["outcome"] == "holds" and sus["flagged"] and "loss not converged" in sus["flags"][0]
    assert decide(0.40, robust, ok, flags=["guard rail probabilities: ..."]).flagged
    # a claim above the interval is refuted whatever the checks say: the measurement is an upper bound
    assert decide(0.90, robust, ChecksBlock("unreliable", ["gradients fail"])).outcome == "overstated"


@pytest.mark.parametrize(
    "text,value", [("0.53", 0.53), ("53", 0.53), ("53%", 0.53), ("1", 1.0), ("0", 0.0), ("100%", 1.0)]
)
def test_claim_as_fraction_or_percent(text, value):
    assert parse_claim(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["-0.1", "153", "half", "nan"])
def test_impossible_claims_are_errors(text):
    with pytest.raises(ConfigError):
        parse_claim(text)


@pytest.mark.parametrize(
    "text,family,steps,restarts,loss",
    [
        ("PGD-20", "pgd", 20, None, "ce"),
        ("PGD-100 x5 restarts", "pgd", 100, 5, "ce"),
        ("PGD 50 steps, 10 restarts, step 2/255", "pgd", 50, 10, "ce"),
        ("CW-100", "cw", 100, None, "margin"),
        ("PGD-20 with the CW loss", "cw", 20, None, "margin"),
        ("FGSM", "fgsm", 1, 1, "ce"),
        ("AutoAttack", "autoattack", None, None, None),
        ("AA (standard)", "autoattack", None, None, None),
        ("APGD-CE", "apgd-ce", None, None, "ce"),
        ("Square 5000 queries", "square", 5000, None, "margin"),
        ("10-step PGD", "pgd", 10, None, "ce"),
    ],
)
def test_claimed_attack_text_is_parsed(text, family, steps, restarts, loss):
    p = parse_claim_attack(text)
    assert p.text == text and p.parsed
    assert (p.family, p.steps, p.restarts, p.loss) == (family, steps, restarts, loss)


@pytest.mark.parametrize(
    "text,version",
    [
        ("AutoAttack", "standard"),
        ("AutoAttack+", "plus"),
        ("AA plus", "plus"),
        ("AutoAttack rand", "rand"),
        ("AutoAttack (APGD-CE + APGD-T)", "standard"),
    ],
)
def test_autoattack_version_in_a_claim(text, version):
    assert parse_claim_attack(text).version == version


def test_claimed_attack_replay_spec():
    p = parse_claim_attack("PGD 50 steps, 10 restarts, step 2/255")
    assert p.step_size == "2/255"
    assert replay_spec(p, 8 / 255) == {
        "attack": "pgd",
        "steps": 50,
        "restarts": 10,
        "loss": "ce",
        "step_size": pytest.approx(2 / 255),
    }
    assert replay_spec(parse_claim_attack("CW-30"), 0.1)["loss"] == "margin"
    assert replay_spec(parse_claim_attack("AutoAttack"), 0.1) is None
    assert (
        not parse_claim_attack("my secret attack").parsed
        and replay_spec(parse_claim_attack("my secret attack"), 0.1) is None
    )


# -- checkpoints are data ----------------------------------------------------------------------


class _CreatesFile:
    """Unpickling this calls open(path, "w"): the file appears if the pickle is ever run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


@pytest.mark.parametrize("fmt", ["torch-zip", "raw-pickle"])
@pytest.mark.parametrize("source", ["registered", "file"])
def test_hostile_pickle_is_refused_and_never_runs(files, tmp_path, capsys, fmt, source, model):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    payload = {"extra": _CreatesFile(marker), **model.state_dict()}  # first, so the refusal is about it
    if fmt == "torch-zip":
        torch.save(payload, ckpt)
    else:
        with open(ckpt, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    spec = "small-cnn" if source == "registered" else f"{files / 'models.py'}:wrapped"
    code, out, err = _audit(
        BASE + ["--model", spec, "--checkpoint", str(ckpt), "--claim", "0.5", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2
    assert not marker.exists()
    assert err.count("\n") == 1 and "refusing to load" in err and "could run code" in err
    assert "open" in err  # the refused global is named
    assert not (tmp_path / "o" / "audit.json").exists()


def test_truncated_checkpoint_is_one_clear_error(files, tmp_path, capsys):
    data = (files / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    code, _, err = _audit(
        BASE
        + [
            "--model",
            "small-cnn",
            "--checkpoint",
            str(tmp_path / "cut.safetensors"),
            "--claim",
            "0.5",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and "truncated" in err and err.count("\n") == 1


def test_mismatched_keys_are_listed(model, tmp_path, capsys):
    state = {k: v for k, v in model.state_dict().items() if k != "net.7.bias"}
    state["net.9.weight"] = torch.zeros(3)
    save_weights(tmp_path / "renamed.safetensors", state)
    code, _, err = _audit(
        BASE
        + [
            "--model",
            "small-cnn",
            "--checkpoint",
            str(tmp_path / "renamed.safetensors"),
            "--claim",
            "0.5",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2
    assert "missing 1 key(s): net.7.bias" in err and "unexpected 1 key(s): net.9.weight" in err
    # same keys, wrong shapes (a 5-class head): every mismatch named with both shapes
    wrong = {k: (v[:5] if k.startswith("net.7") else v) for k, v in model.state_dict().items()}
    save_weights(tmp_path / "shapes.safetensors", wrong)
    code, _, err = _audit(
        BASE
        + [
            "--model",
            "small-cnn",
            "--checkpoint",
            str(tmp_path / "shapes.safetensors"),
            "--claim",
            "0.5",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and "shape mismatch for 2 key(s)" in err and "net.7.weight (5, 100) vs model (10, 100)" in err


# -- model files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source,line,what",
    [
        ("import torch\n\n\ndef make(:\n    pass\n", 4, "SyntaxError"),
        ("import torch\n\nx = 1\nraise_here = undefined_name + 1\n", 4, "NameError"),
        ("def make():\n    return helper()\n\n\ndef helper():\n    return 1 / 0\n", 6, "ZeroDivisionError"),
    ],
)
def test_model_file_errors_name_the_file_and_line(tmp_path, capsys, files, source, line, what):
    f = tmp_path / "net.py"
    f.write_text(source)
    code, out, err = _audit(
        BASE
        + [
            "--model",
            f"{f}:make",
            "--checkpoint",
            str(files / "w.safetensors"),
            "--claim",
            "0.5",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{f}:{line}" in err and what in err


def test_unknown_factory_lists_what_the_file_defines(files, tmp_path, capsys):
    code, _, err = _audit(
        BASE
        + [
            "--model",
            f"{files / 'models.py'}:make",
            "--checkpoint",
            str(files / "w.safetensors"),
            "--claim",
            "0.5",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and "no function 'make'" in err and "bare" in err and "wrapped" in err


def test_model_file_may_import_its_siblings_and_sys_path_is_restored(tmp_path):
    import sys

    from harness.audit.model_files import ModelFileError, build_from_file, parse_model_spec

    (tmp_path / "audit_test_blocks.py").write_text(
        "from torch import nn\n\n\ndef head(c, k):\n    return nn.Linear(c, k)\n"
    )
    (tmp_path / "net.py").write_text(
        "from torch import nn\nfrom audit_test_blocks import head\n\n\ndef make(num_classes, shape, depth=1):\n"
        "    return nn.Sequential(nn.Flatten(), head(shape[0] * shape[1] * shape[2], num_classes))\n"
    )
    before = list(sys.path)
    net, info = build_from_file(
        parse_model_spec(f"{tmp_path / 'net.py'}:make"), shape=(1, 8, 8), num_classes=10, mean=(0.3,), std=(0.38,)
    )
    assert sys.path == before
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert info["factory_kwargs"] == {"num_classes": 10, "shape": [1, 8, 8]} and len(info["file_sha256"]) == 64
    assert parse_model_spec("small-cnn") is None
    with pytest.raises(ModelFileError, match="FILE.py:FACTORY"):
        parse_model_spec(str(tmp_path / "net.py"))


# -- guard rails -------------------------------------------------------------------------------


def test_model_outputting_probabilities_is_flagged(files, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("audit_test_models", files / "models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    b = bundle("digits")
    net = mod.probs(10, b.shape, b.mean, b.std)
    net.net.load_state_dict(trained("digits", adversarial=False).state_dict())
    save_weights(tmp_path / "probs.safetensors", net)
    code, out, err = _audit(
        BASE
        + [
            "--model",
            f"{files / 'models.py'}:probs",
            "--checkpoint",
            str(tmp_path / "probs.safetensors"),
            "--claim",
            "0",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    # the guard rail warns and the sanity checks' `outputs` finding fails; the adaptive stage attacks
    # the log-probabilities (the `logits` remedy), which resolves the flag, so the claim of 0 holds, flagged
    assert code == 0
    doc = json.loads((tmp_path / "o" / "audit.json").read_text())
    finding = {g["check"]: g for g in doc["guard_rails"]["findings"]}["probabilities"]
    assert finding["status"] == "warn"
    outputs = {f["check"]: f for f in doc["eval"]["checks"]["findings"]}["outputs"]
    assert outputs["status"] == "fail"
    flag = {f["check"]: f for f in doc["eval"]["adaptive"]["flags"]}["outputs"]
    assert flag["outcome"] == "resolved" and "logits" in flag["remedies"], flag
    assert doc["verdict"]["outcome"] == "holds" and doc["verdict"]["flagged"], doc["verdict"]
    assert "WARNING (probabilities)" in out and "probabilities" in (tmp_path / "o" / "audit.md").read_text()


def test_model_expecting_normalised_input_is_refused(files, tmp_path, capsys):
    args = BASE + ["--model", f"{files / 'models.py'}:bare", "--checkpoint", str(files / "net.pt"), "--claim", "0.5"]
    code, _, err = _audit(args + ["--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "more accurate on inputs normalised" in err and "--normalize" in err and "inside the model" in err
    assert not (tmp_path / "o").exists()
    # the reviewer adds the normalisation explicitly; the audit runs and records it
    code, _, err = _audit(args + ["--normalize", "dataset", "--out", str(tmp_path / "n")], capsys)
    assert code in (0, 1), err
    doc = json.loads((tmp_path / "n" / "audit.json").read_text())
    assert doc["model"]["normalize_added"]["mean"] == [0.3] and doc["model"]["normalize_added"]["std"] == [0.38]
    assert {g["check"]: g["status"] for g in doc["guard_rails"]["findings"]}["normalised-input"] == "ok"


class _Scaled(nn.Module):
    """Expects 0..255 input: divides by 255 before a model that takes [0,1]."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x / 255.0)


def test_guard_rails_on_a_good_model_pass_and_catch_the_rest(model):
    b = bundle("digits")
    x, y = points(n=200)
    kw = dict(mean=b.mean, std=b.std, num_classes=10)
    good = {g.check: g.status for g in guard_rails(model, x, y, threat=ThreatModel.parse("Linf", "0.1"), **kw)}
    assert set(good.values()) == {"ok"}
    scaled = {g.check: g.to_json() for g in guard_rails(_Scaled(model), x, y, **kw)}  # error findings stop run_audit
    assert scaled["0-255-input"]["status"] == "fail" and "scaled to 0..255" in scaled["0-255-input"]["message"]
    assert scaled["normalised-input"]["status"] == "ok"
    # randomised outputs in eval mode, and eps 0.031 for 8/255
    noisy = nn.Sequential(model, _Noise())
    found = {g.check: g.to_json() for g in guard_rails(noisy, x, y, threat=ThreatModel.parse("Linf", "0.031"), **kw)}
    assert found["deterministic"]["status"] == "warn" and "--suite rand" in found["deterministic"]["message"]
    assert found["eps"]["status"] == "warn" and "8/255" in found["eps"]["message"]
    # wrong output shape (a model returning (logits, features)) is refused
    with pytest.raises(AuditRefused, match="returns a tuple, not a tensor of logits"):
        guard_rails(_Tuple(model), x, y, **kw)
    with pytest.raises(AuditRefused, match=r"expected logits of shape \(200, 10\)"):
        guard_rails(nn.Sequential(model, nn.Linear(10, 3)), x, y, **kw)
    # a model at chance is flagged
    chance = {g.check: g.status for g in guard_rails(_Constant(), x, y, **kw)}
    assert chance["clean-accuracy"] == "warn"


class _Noise(nn.Module):
    def forward(self, z):
        return z + torch.randn_like(z)


class _Tuple(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x.flatten(1)


class _Constant(nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 10).index_fill_(1, torch.tensor([3]), 1.0) * 5.0


def test_sign_test():
    assert sign_test(0, 0) == 1.0
    assert sign_test(17, 1) == pytest.approx(19 / 2**18)
    assert sign_test(5, 5) > 0.5


def test_eps_in_0_255_units_is_rejected(files, tmp_path, capsys):
    argv = [a if a != EPS else "8" for a in BASE] + [
        "--model",
        "small-cnn",
        "--checkpoint",
        str(files / "w.safetensors"),
        "--claim",
        "0.5",
        "--out",
        str(tmp_path / "o"),
    ]
    code, _, err = _audit(argv, capsys)
    assert code == 2 and "did you mean --eps 8/255" in err


# -- RobustBench names, weights from a local model directory -----------------------------------

ZOO_NAME = "Ding2020MMA"  # a real zoo entry (CIFAR-10, Linf); WRN-28-4 builds in a fraction of a second


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A model dir in robustbench's layout holding random weights for a real zoo name, saved the
    way zoo files are ({"state_dict": {"module.<key>": ...}}), and a tiny fake CIFAR-10."""
    from harness.data import write_cifar_batch
    from harness.robustbench_compat import zoo_entry

    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    ref = zoo_entry(ZOO_NAME, "cifar10", "Linf")["model"]().eval()
    d = root / "models" / "cifar10" / "Linf"
    d.mkdir(parents=True)
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 99}, d / f"{ZOO_NAME}.pt"
    )
    data = root / "data" / "cifar-10-batches-py"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(data / f, rng.integers(0, 256, (8, 3, 32, 32)).astype(np.uint8), rng.integers(0, 10, 8))
    return root, ref


def test_robustbench_weights_load_as_data_into_the_zoo_architecture(zoo):
    from harness.robustbench_compat import load_zoo_model

    root, ref = zoo
    net, info = load_zoo_model(ZOO_NAME, dataset="cifar10", threat="Linf", model_dir=root / "models")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), ref(x))
    assert info["kind"] == "robustbench" and info["files"][0]["path"].endswith(f"cifar10/Linf/{ZOO_NAME}.pt")
    assert not net.training


def test_robustbench_audit_through_the_cli(zoo, tmp_path, capsys):
    root, _ = zoo
    code, out, err = _audit(
        [
            "audit",
            "--robustbench",
            ZOO_NAME,
            "--model-dir",
            str(root / "models"),
            "--dataset",
            "cifar10",
            "--data-dir",
            str(root / "data"),
            "--eps",
            "8/255",
            "--claim",
            "0.5",
            "--claim-attack",
            "AutoAttack",
            "--suite",
            "smoke",
            "--n",
            "4",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code in (0, 1), err
    doc = json.loads((tmp_path / "o" / "audit.json").read_text())
    assert doc["model"]["kind"] == "robustbench" and doc["model"]["name"] == ZOO_NAME
    assert doc["measured"]["n"] == 4
    # the smoke suite has no AutoAttack, so it is not stronger than the claim's attack: flagged
    assert doc["strength"]["suite_stronger"] is False and doc["verdict"]["flagged"]


def test_robustbench_missing_weights_is_one_clear_error(zoo, tmp_path, capsys):
    root, _ = zoo
    empty = tmp_path / "nothing-here"
    code, _, err = _audit(
        [
            "audit",
            "--robustbench",
            ZOO_NAME,
            "--model-dir",
            str(empty),
            "--dataset",
            "cifar10",
            "--data-dir",
            str(root / "data"),
            "--eps",
            "8/255",
            "--claim",
            "0.5",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1
    assert str(empty / "cifar10" / "Linf" / f"{ZOO_NAME}.pt") in err and "nothing is downloaded" in err
    assert not empty.exists()  # robustbench's own loader would have created it and started a download


def test_robustbench_unknown_name_suggests_close_ones():
    from harness.robustbench_compat import zoo_entry

    with pytest.raises(UnknownNameError, match="did you mean Ding2020MMA"):
        zoo_entry("Ding2020MM", "cifar10", "Linf")
    with pytest.raises(ConfigError, match="no models for data set 'digits'"):
        zoo_entry(ZOO_NAME, "digits", "Linf")


# -- robustbench's own loader reads the same files, with the network blocked ---------------------


def _block_network(monkeypatch):
    """Any connection attempt fails: robustbench's loader downloads (gdown) when a file is missing."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _robustbench_load_model(monkeypatch):
    from harness.robustbench_compat import robustbench

    robustbench()
    import robustbench.utils as rbu

    def no_download(*args, **kwargs):
        raise AssertionError(f"robustbench tried to download {args}")

    monkeypatch.setattr(rbu, "download_gdrive_new", no_download)
    _block_network(monkeypatch)
    return rbu.load_model


def test_robustbenchs_own_loader_reads_the_same_file_offline(zoo, monkeypatch):
    """robustbench 1.1.1's utils.load_model (zoo entry -> MODEL_DIR/DATASET/THREAT/NAME.pt ->
    torch.load -> 'state_dict' -> strip 'module.' then 'model.' -> strict load) and the harness's
    loader give the same network from the fixture's file."""
    from harness.robustbench_compat import load_zoo_model

    root, ref = zoo
    load_model = _robustbench_load_model(monkeypatch)
    before = sorted(str(p) for p in (root / "models").rglob("*"))
    theirs = load_model(ZOO_NAME, model_dir=str(root / "models"), dataset="cifar10", threat_model="Linf")
    ours, _ = load_zoo_model(ZOO_NAME, dataset="cifar10", threat="Linf", model_dir=root / "models")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(theirs(x), ours(x)) and torch.equal(ours(x), ref(x))
    assert sorted(str(p) for p in (root / "models").rglob("*")) == before  # nothing downloaded or added


def _layout(name, state, layout):
    if layout == "model-prefix":  # e.g. Chen2020Efficient's files: no wrapper, keys under 'model.'
        return {f"model.{k}": v for k, v in state.items()}
    if layout == "no-mu-sigma":  # Wong2020Fast's file: the normalisation constants live in the architecture only
        return {"state_dict": {k: v for k, v in state.items() if k not in ("mu", "sigma")}}
    if layout == "last-best":  # Andriushchenko2020Understanding's file: robustbench takes 'last'
        return {
            "last": {f"module.{k}": v for k, v in state.items()},
            "best": {k: torch.zeros_like(v) for k, v in state.items()},
        }
    raise AssertionError(layout)


@pytest.mark.parametrize(
    "name,layout",
    [
        ("Ding2020MMA", "model-prefix"),
        ("Wong2020Fast", "no-mu-sigma"),
        ("Andriushchenko2020Understanding", "last-best"),
    ],
)
def test_zoo_file_layouts_load_as_robustbench_loads_them(name, layout, tmp_path, monkeypatch):
    from harness.robustbench_compat import load_zoo_model, zoo_entry

    torch.manual_seed(0)
    ref = zoo_entry(name, "cifar10", "Linf")["model"]().eval()
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save(_layout(name, ref.state_dict(), layout), folder / f"{name}.pt")
    load_model = _robustbench_load_model(monkeypatch)
    theirs = load_model(name, model_dir=str(tmp_path / "models"), dataset="cifar10", threat_model="Linf")
    ours, info = load_zoo_model(name, dataset="cifar10", threat="Linf", model_dir=tmp_path / "models")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(theirs(x), ours(x)) and torch.equal(ours(x), ref(x))
    if layout == "no-mu-sigma":
        assert any("mu, sigma" in note for note in info["load_notes"])


def test_a_strict_zoo_model_with_missing_keys_is_still_refused(tmp_path):
    """Leniency is robustbench's, per model: Ding2020MMA is not on its list, so a file missing
    a key is an error there and here."""
    from harness.core.errors import CheckpointError
    from harness.robustbench_compat import load_zoo_model, zoo_entry

    ref = zoo_entry(ZOO_NAME, "cifar10", "Linf")["model"]()
    state = ref.state_dict()
    state.pop(next(iter(state)))
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save(state, folder / f"{ZOO_NAME}.pt")
    with pytest.raises(CheckpointError, match="missing 1 key"):
        load_zoo_model(ZOO_NAME, dataset="cifar10", threat="Linf", model_dir=tmp_path)


def test_a_zoo_name_robustbench_takes_from_timm_is_one_clear_error(tmp_path):
    from harness.robustbench_compat import zoo_files

    with pytest.raises(ConfigError, match="through timm .*debenedetti2022light_xcit_s12_cifar10_linf"):
        zoo_files("Debenedetti2022Light_XCiT-S12", dataset="cifar10", threat="Linf", model_dir=tmp_path)
