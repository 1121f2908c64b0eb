"""Issue 25's audit faults: an unreadable or impossible --claim-attack is one line and exit 2 (it
used to remove the flag and say CLAIM HOLDS), a claim whose strength cannot be compared stays
flagged, a model whose factory never returns is ended by --timeout with one line, and a
randomised model is judged like with like by the input-scale guard rails, which --input-range 01
can overrule (recorded)."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn
from trained_models import points, trained

from harness.audit.claim import check_claim_attack
from harness.audit.guards import GuardContext, guard_rails
from harness.audit.process import default_timeout
from harness.audit.session import AuditRequest
from harness.checkpoints import save_weights
from harness.cli import main
from harness.core.errors import ConfigError

BASE = ["audit", "--dataset", "digits", "--eps", "0.05", "--suite", "smoke", "--n", "32"]

MODELS = textwrap.dedent('''
    import torch
    from torch import nn
    from harness.models import NormalizedModel, small_cnn


    def wrapped(num_classes, shape, mean, std):
        return NormalizedModel(small_cnn(shape, num_classes), mean, std)


    def forever(num_classes, shape, mean, std):
        while True:
            pass


    class RandomQuantiser(nn.Module):
        """Quantises its [0,1] input to a random number of levels at every forward pass."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            levels = int(torch.randint(4, 12, ()).item())
            return self.net(torch.round(x * levels) / levels)


    def random_quantiser(num_classes, shape, mean, std):
        return RandomQuantiser(NormalizedModel(small_cnn(shape, num_classes), mean, std))
''')


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("audit-faults")
    (d / "models.py").write_text(MODELS)
    model = trained("digits", adversarial=False)
    save_weights(d / "w.safetensors", model)
    wrapper = nn.Module()
    wrapper.net = model
    save_weights(d / "rq.safetensors", wrapper)
    return d


@pytest.mark.parametrize("text", ["PGD-1e3", "banana", "", "PGD-0", "PGD-20 x 0 restarts", "PGD--5", "PGD-2.5"])
def test_an_unreadable_or_impossible_claim_attack_is_one_line_and_exit_2(files, text, tmp_path, capsys):
    with pytest.raises(ConfigError):
        check_claim_attack(text)
    argv = BASE + ["--model", f"{files / 'models.py'}:wrapped", "--checkpoint", str(files / "w.safetensors")]
    code = main(argv + ["--claim", "0.5", "--claim-attack", text, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--claim-attack" in err, err
    assert not (tmp_path / "o").exists()


def test_the_usual_ways_of_writing_an_attack_still_parse():
    assert check_claim_attack("PGD-100 x5 restarts").restarts == 5
    assert check_claim_attack("PGD 50 steps, 10 restarts, step 2/255").steps == 50
    assert check_claim_attack("AutoAttack").family == "autoattack"
    assert check_claim_attack(None).parsed is False  # no claimed attack at all: allowed, and flagged


def test_a_claim_whose_strength_cannot_be_compared_stays_flagged(files, tmp_path, capsys):
    argv = BASE + ["--model", f"{files / 'models.py'}:wrapped", "--checkpoint", str(files / "w.safetensors")]
    main(argv + ["--claim", "0", "--claim-attack", "Square 5000", "--out", str(tmp_path / "o"), "--adaptive", "off"])
    doc = json.loads((tmp_path / "o" / "audit.json").read_text())
    assert doc["strength"]["suite_stronger"] is None
    assert doc["verdict"]["outcome"] == "holds" and doc["verdict"]["flagged"]
    assert any("strength was not compared" in f for f in doc["verdict"]["flags"]), doc["verdict"]["flags"]


def test_a_factory_that_never_returns_is_ended_by_the_timeout(files, tmp_path, capsys):
    argv = BASE + ["--model", f"{files / 'models.py'}:forever", "--claim", "0.5", "--timeout", "3"]
    code = main(argv + ["--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "did not finish within 3 s" in err and err.count("\n") == 1, err


def test_the_default_timeout_is_generous_and_scales_with_n_and_the_suite():
    small = default_timeout(AuditRequest("digits", "0.1", 0.5, suite="quick", n=100))
    big = default_timeout(AuditRequest("digits", "0.1", 0.5, suite="standard", n=1000))
    assert 1800 < small < big and big >= 1800 + 1000 * 60


def test_the_input_scale_guard_judges_a_randomised_model_by_majority_votes_on_both_inputs():
    x, y = points("digits", n=200)
    net = trained("digits", adversarial=False)
    b = __import__("trained_models").bundle("digits")

    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.net((t + 0.15 * torch.randn_like(t)).clamp(0, 1))

    ctx = GuardContext(Noisy().eval(), x, y, b.mean, b.std, 10)
    assert ctx.randomised
    torch.manual_seed(0)
    votes = ctx.correct_on(x)
    torch.manual_seed(1)
    again = ctx.correct_on(x)
    # a majority of 9 passes is far steadier than two single random draws
    assert float((votes != again).float().mean()) < 0.05
    found = {f.check: f for f in guard_rails(Noisy().eval(), x, y, mean=b.mean, std=b.std, num_classes=10)}
    assert found["normalised-input"].status in ("ok", "warn") and found["deterministic"].status == "warn"


def test_input_range_01_overrules_the_input_scale_guards_and_is_recorded(files, tmp_path, capsys):
    argv = BASE + [
        "--model",
        f"{files / 'models.py'}:random_quantiser",
        "--checkpoint",
        str(files / "rq.safetensors"),
        "--claim",
        "0",
        "--input-range",
        "01",
        "--adaptive",
        "off",
        "--out",
        str(tmp_path / "o"),
    ]
    code = main(argv)
    assert code in (0, 1), capsys.readouterr().err
    doc = json.loads((tmp_path / "o" / "audit.json").read_text())
    guards = {g["check"]: g for g in doc["guard_rails"]["findings"]}
    assert (
        guards["normalised-input"]["status"] == "skipped"
        and "--input-range 01" in guards["normalised-input"]["message"]
    )
    assert guards["0-255-input"]["status"] == "skipped"
    assert doc["overrides"] == {"input_range": "01"}
