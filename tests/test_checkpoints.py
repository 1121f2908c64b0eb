"""Checkpoints are data, never code: safetensors weights, weights_only torch files, hostile pickles
refused before anything in them runs, truncated files and mismatched keys reported clearly."""

from __future__ import annotations

import pickle

import pytest
import torch
from hostile_pickles import HOSTILE
from torch import nn

from harness import checkpoints as C
from harness.core.errors import CheckpointError
from harness.models import build_model


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small-cnn", (1, 8, 8), 10, [0.5], [0.25])


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_safetensors_round_trip_with_metadata(tmp_path):
    from safetensors import safe_open

    a, b = _model(0), _model(1)
    assert not _same(a, b)
    p = C.save_weights(tmp_path / "best.safetensors", a, metadata={"epoch": 3, "acc": 0.5})
    with safe_open(str(p), "pt") as f:
        assert f.metadata() == {"epoch": "3", "acc": "0.5"}
    assert C.load_into(b, C.load_state_dict_file(p)) == []
    assert _same(a, b)
    assert [q.name for q in tmp_path.iterdir()] == ["best.safetensors"]  # written atomically, no temp file left


def test_tied_weights_are_saved(tmp_path):
    lin = nn.Linear(4, 4)
    tied = nn.Sequential(lin, nn.ReLU(), lin)
    p = C.save_weights(tmp_path / "t.safetensors", tied)
    back = C.load_state_dict_file(p)
    assert torch.equal(back["0.weight"], back["2.weight"])


def test_safetensors_content_is_recognised_whatever_the_suffix(tmp_path):
    a = _model()
    C.save_weights(tmp_path / "w.safetensors", a)
    (tmp_path / "w.bin").write_bytes((tmp_path / "w.safetensors").read_bytes())
    assert C.load_state_dict_file(tmp_path / "w.bin").keys() == a.state_dict().keys()


def test_plain_and_wrapped_torch_state_dicts_load_with_weights_only(tmp_path):
    a = _model(0)
    torch.save(a.state_dict(), tmp_path / "plain.pt")
    wrapped = {"epoch": 9, "state_dict": {f"module.{k}": v for k, v in a.state_dict().items()}}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    b = _model(1)
    assert C.load_into(b, C.load_state_dict_file(tmp_path / "plain.pt")) == []
    assert _same(a, b)
    c = _model(2)
    assert C.load_into(c, C.load_state_dict_file(tmp_path / "wrapped.pt")) == ["stripped 'module.'"]
    assert _same(a, c)


def test_weights_of_the_bare_network_load_behind_normalize(tmp_path):
    a = _model(0)
    C.save_weights(tmp_path / "net.safetensors", a.net)  # someone else's checkpoint: no Normalize layer
    b = _model(1)
    notes = C.load_into(b, C.load_state_dict_file(tmp_path / "net.safetensors"))
    assert notes == ["as the network behind Normalize"]
    assert _same(a, b)  # the model's own normalisation is kept
    with pytest.raises(CheckpointError, match="does not match the model: missing 10 key"):
        C.load_into(_model(), C.load_state_dict_file(tmp_path / "net.safetensors"), allow_net_only=False)


@pytest.mark.parametrize("hostile", HOSTILE)
@pytest.mark.parametrize("fmt", ["pickle-2", "pickle-latest", "torch-zip"])
@pytest.mark.filterwarnings(
    "ignore:Detected pickle protocol:UserWarning"
)  # torch says it about protocol 5, which is the point
def test_a_hostile_pickle_is_refused_and_never_runs(tmp_path, hostile, fmt):
    target = tmp_path / "pwned"
    payload = {"weight": torch.zeros(2), "x": hostile(str(target))}
    p = tmp_path / "evil.pt"
    if fmt == "torch-zip":
        torch.save(payload, p)  # the zip container torch.save writes today
    else:
        p.write_bytes(pickle.dumps(payload, protocol=2 if fmt == "pickle-2" else pickle.HIGHEST_PROTOCOL))
    assert not target.exists()
    with pytest.raises(CheckpointError, match="refusing to load.*never code"):
        C.load_state_dict_file(p)
    with pytest.raises(CheckpointError, match="refusing to load"):
        C.load_resume(p)
    assert not target.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_truncated_checkpoint_is_an_error(tmp_path, suffix):
    a = _model()
    p = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(a.state_dict(), p)
    else:
        C.save_weights(p, a)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        C.load_state_dict_file(p)


def test_missing_empty_and_stateless_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        C.load_state_dict_file(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        C.load_state_dict_file(tmp_path / "empty.pt")
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="holds no state dict.*epoch, note"):
        C.load_state_dict_file(tmp_path / "meta.pt")
    (tmp_path / "text.pt").write_text("hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        C.load_state_dict_file(tmp_path / "text.pt")


def test_mismatched_keys_are_listed():
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.pop("net.5.weight")
    state["net.9.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as ei:
        C.load_into(model, state, source="ckpt.pt")
    msg = str(ei.value)
    assert msg.startswith("ckpt.pt does not match the model")
    assert "missing 1 key(s): net.5.weight" in msg and "unexpected 1 key(s): net.9.weight" in msg


def test_shape_mismatches_are_listed_and_nothing_is_half_loaded():
    model = _model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.ones_like(v) for k, v in model.state_dict().items()}
    state["net.5.weight"] = torch.ones(100, 99)
    with pytest.raises(
        CheckpointError, match=r"shape mismatch for 1 key\(s\): net.5.weight \(100, 99\) vs model \(100, 128\)"
    ):
        C.load_into(model, state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_resume_file_round_trip_with_weights_only(tmp_path):
    from harness.core.runtime import rng_state

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(4, 1, 8, 8)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    payload = {
        "epoch": 4,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng_state(),
        "best": {"epoch": 2, "acc": 0.25},
    }
    p = C.save_resume(tmp_path / "last.pt", payload)
    torch.load(p, weights_only=True)  # the file itself is plain data
    back = C.load_resume(p)
    assert back["epoch"] == 4 and back["best"] == {"epoch": 2, "acc": 0.25}
    opt2 = torch.optim.SGD(_model(1).parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(back["optimizer"])
    assert opt2.state_dict()["param_groups"][0]["momentum"] == 0.9
    assert C.load_state_dict_file(p).keys() == model.state_dict().keys()  # a resume file is also a weights file
