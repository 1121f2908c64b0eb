"""The cost benchmark's pieces run on a tiny setting (generated data, a few steps). A smoke, not a
timed test: speed targets belong to benchmarks/run.py, never to the test suite."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import attacks as A  # noqa: E402
from benchmarks import default_run as R  # noqa: E402
from benchmarks import defenses as D  # noqa: E402
from benchmarks import knobs as K  # noqa: E402
from benchmarks import peers as P  # noqa: E402
from benchmarks import run as B  # noqa: E402
from harness.core.threat import ThreatModel  # noqa: E402
from harness.data import load_dataset  # noqa: E402

CPU = torch.device("cpu")


def test_training_multipliers_passes_and_pass_costs():
    rows = D.bench_training("synthetic", CPU, ["fast-at", "free-at"], rounds=1, min_time=0.01, warmup=1)
    by = {r["defense"]: r for r in rows}
    assert by["fast-at"]["forward_per_example"] == pytest.approx(2.0) and by["fast-at"]["theory"] == 2.0
    assert by["free-at"]["backward_per_example"] == pytest.approx(
        by["free-at"]["theory"]
    )  # m replays, counted by hooks
    assert all(r["wall_multiplier"] > 0 and r["erm_wall_us_per_example"] > 0 for r in rows)
    costs = D.bench_pass_costs_for(rows, "synthetic", CPU, rounds=1, min_time=0.01)
    assert {(c["model"], c["batch_size"]) for c in costs} == {(r["model"], r["batch_size"]) for r in rows}
    D.annotate(rows, costs)
    assert all(r["theory_priced_here"] > 0 for r in rows)
    table = D.training_table(rows)
    assert "free-at" in table and "theory here" in table and "update + input grad" in D.pass_costs_table(costs)


def test_every_registered_defense_is_priced_and_counted_as_its_paper_says():
    """The cost table covers every defense: its theory is priced on this machine (how its units
    split into attack steps and weight updates is declared), and its measured passes equal the
    paper's arithmetic."""
    from defenses.registry import DEFENSES

    names = [n for n in DEFENSES.names() if n != "erm"]
    assert set(names) <= set(D.UPDATE_UNITS) | D.REPLAY_DEFENSES
    new = ["mart", "pgd-at-awp", "trades-awp", "n-fgsm", "gradalign"]
    rows = D.bench_training("synthetic", CPU, new, rounds=1, min_time=0.01, warmup=1)
    for r in rows:
        assert r["forward_per_example"] == pytest.approx(r["expected"]["forward"]), r["defense"]
        assert r["backward_per_example"] == pytest.approx(r["expected"]["backward"]), r["defense"]
        assert r["theory"] == r["expected"]["backward"]


def test_our_pgd_beside_the_peers_on_the_same_points():
    bundle = load_dataset("synthetic")
    model = A.train_model(bundle, CPU, epochs=1, max_batches=5)
    x, y = bundle.test.first(48)
    block = A.bench_peers(
        model,
        x,
        y,
        eps=0.1,
        eps_text="0.1",
        steps=3,
        step_size="eps/4",
        batch_size=32,
        device=CPU,
        num_classes=10,
        rounds=1,
    )
    libs = {r["library"]: r for r in block["rows"]}
    assert "harness" in libs and libs["harness"]["examples_per_s"] > 0
    for name in ("torchattacks", "art", "pyautoattack"):
        assert (name in libs) == (P.available(name) is not None)
        if name in libs:
            assert 0 <= libs[name]["accuracy"] <= 1 and "ours_not_weaker" in libs[name]
    assert "PGD-3" in A.peers_table([block])


def test_paired_comparison_flags_a_weaker_attack():
    ours = torch.ones(100, dtype=torch.bool)
    peer = torch.zeros(100, dtype=torch.bool)
    assert not A._paired(ours, peer)["ours_not_weaker"]  # ours leaves 100 points robust that the peer broke
    assert A._paired(peer, ours)["ours_not_weaker"]
    assert A._paired(ours, ours)["ours_not_weaker"]


def test_a_suite_beside_autoattack_direct():
    bundle = load_dataset("synthetic")
    model = A.train_model(bundle, CPU, epochs=1, max_batches=5)
    x, y = bundle.test.first(16)
    out = A.bench_suite(
        model,
        x,
        y,
        suite="smoke",
        threat=ThreatModel.parse("Linf", "0.1"),
        batch_size=16,
        device=CPU,
        num_classes=10,
        peer=False,
    )
    assert out["rows"][0]["library"] == "harness" and 0 <= out["rows"][0]["accuracy"] <= 1


def test_the_pyautoattack_peer_adapters_return_robust_masks():
    bundle = load_dataset("synthetic")
    model = A.train_model(bundle, CPU, epochs=1, max_batches=2)
    x, y = bundle.test.first(6)
    # eps 0.5 breaks every point in AutoAttack's first component, so the rest has nothing to do
    mask = P.autoattack(model, eps=0.5, version="standard", batch_size=6, device=CPU)(x, y)
    assert mask.dtype == torch.bool and mask.shape == (6,) and not bool(mask.any())
    mask = P.apgd(model, eps=0.05, steps=2, batch_size=6, device=CPU)(x, y)
    assert mask.dtype == torch.bool and mask.shape == (6,)


def test_knobs_measure_every_precision_and_memory_format():
    doc = K.bench_knobs(CPU, dataset="synthetic", min_time=0.01, rounds=1, train_batch=16)
    assert {(r["precision"], r["memory_format"]) for r in doc["rows"]} == set(K.settings_for(CPU))
    base = next(r for r in doc["rows"] if r["precision"] == "fp32" and r["memory_format"] == "contiguous")
    assert base["train_speedup"] == pytest.approx(1.0)
    assert "channels_last" in K.knobs_table(doc)


def test_the_default_run_measures_wall_time_and_peak_memory(tmp_path):
    extra = ["--dataset", "synthetic", "--epochs", "1", "--suite", "smoke", "--n", "16", "--set", "monitor.val_n=32"]
    r = R.run_default(extra, device="cpu", out_root=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r["exit_code"] == 0, r.get("error")
    assert r["wall_s"] > 0 and r["peak_rss_mib"] > 0 and r["resources"]["peak_rss_mib"] > 0
    assert r["epochs_run"] == 1 and len(r["eval"]) == 2 and r["train_wall_s"] > 0
    assert "peak resident memory" in R.default_run_table(r)


def test_the_one_command_renders_every_part_it_ran():
    small = {
        "train_rounds": 1,
        "train_min_time": 0.01,
        "eval_n": 32,
        "eval_steps": [2],
        "eval_rounds": 1,
        "suite_n": 0,
        "model_epochs": 1,
        "model_batches": 3,
        "knob_min_time": 0.01,
    }
    doc = B.run_all(dataset="synthetic", device_name="cpu", quick=True, skip=["default-run"], overrides=small)
    text = B.render(doc)
    assert "1. training" in text and "2. evaluation" in text and "3. knobs" in text and "4. the default run" not in text
    assert doc["schema"] == "benchmark" and doc["machine"]["torch_threads"] >= 1
    with pytest.raises(SystemExit):
        B.main(["--skip", "nonsense"])


def test_the_distributed_benchmark_measures_ranks_and_the_one_command_renders_it(monkeypatch):
    from benchmarks import distributed as DB

    doc = DB.bench_distributed((2,), tiny=True)  # 2 ranks only: a 1-rank point is the same code, started the same way
    p = doc["points"][0]
    assert p["exit_code"] == 0 and p.get("suite_exit_code") == 0, p.get("error") or p.get("suite_error")
    assert p["train_examples_per_s"] > 0 and p["suite_examples_per_s"] > 0 and p["train_ratio"] == pytest.approx(1.0)
    assert p["same_per_example_as_first"] and "quick suite ex/s" in DB.distributed_table(doc)
    monkeypatch.setattr(DB, "bench_distributed", lambda ranks, tiny, log: doc)
    every = ["training", "evaluation", "knobs", "default-run"]
    text = B.render(B.run_all(device_name="cpu", quick=True, skip=every, include=["distributed"]))
    assert "5. distributed" in text and "1. training" not in text


def test_the_gpu_benchmark_runs_every_path_on_the_cpu_with_tiny_sizes():
    from benchmarks import gpu as G

    doc = G.bench_gpu(tiny=True)
    assert [(r["precision"], r["memory_format"]) for r in doc["training"]] == [
        (p, m) for p in ("fp32", "bf16") for m in ("contiguous", "channels_last")
    ]
    assert all(r["epoch_s"] > 0 and r["train_examples_per_s"] > 0 for r in doc["training"])
    assert [b["memory_format"] for b in doc["autoattack"]] == ["contiguous", "channels_last"]
    assert all(c["examples_per_s"] > 0 and c["n"] == 4 for b in doc["autoattack"] for c in b["components"])
    text = G.render(doc)
    assert "1. Fast-AT" in text and "2. AutoAttack" in text and "APGD-CE" in text
    bundle = G.synthetic_cifar(8, 2, 2)
    assert bundle.train.x.dtype == torch.uint8 and tuple(bundle.train.x.shape) == (8, 3, 32, 32)


def test_co_sweep_trains_every_point_and_renders_the_figure(tmp_path):
    """benchmarks/co_sweep.py on digits with one epoch per run: the runs, the table, the figure,
    and a second call that reuses the finished runs."""
    from benchmarks import co_sweep as S

    argv = [
        "--dataset",
        "digits",
        "--eps",
        "0.05",
        "0.1",
        "--defenses",
        "fast-at",
        "n-fgsm",
        "--epochs",
        "1",
        "--val-n",
        "40",
        "--selection-steps",
        "3",
        "--threads",
        "1",
        "--root",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert S.main(argv) == 0
    doc = json.loads((tmp_path / "out" / "co_sweep.json").read_text())
    expected = {(d, e) for d in ("fast-at", "n-fgsm") for e in ("0.05", "0.1")}
    assert {(p["defense"], p["eps"]) for p in doc["points"]} == expected
    for p in doc["points"]:
        assert 0 <= p["last_robust"] <= p["last_clean"] <= 1 and p["epochs_run"] == 1 and p["selection"] == "PGD-3 CE"
        assert p["passes_per_epoch"]["backward"] == pytest.approx(2.0)
    svg = (tmp_path / "out" / "co_sweep.svg").read_text()
    assert svg.startswith("<svg") and "n-fgsm" in svg and "fast-at" in svg
    assert "| n-fgsm | 0.1 |" in (tmp_path / "out" / "co_sweep.md").read_text()
    cfg = json.loads((tmp_path / "runs" / "fast-at-eps0.1" / "config.json").read_text())
    assert cfg["monitor"]["early_stop"] is False and cfg["threat"]["eps"] == "0.1"
    before = (tmp_path / "runs" / "fast-at-eps0.1" / "training.json").stat().st_mtime_ns
    assert S.main(argv) == 0
    assert (tmp_path / "runs" / "fast-at-eps0.1" / "training.json").stat().st_mtime_ns == before
    # --collect plots what is there (e.g. a harness sweep's cells) without training anything
    assert S.main(["--collect", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "collected")]) == 0
    again = json.loads((tmp_path / "collected" / "co_sweep.json").read_text())
    assert sorted(p["run"] for p in again["points"]) == sorted(p["run"] for p in doc["points"])
    assert again["dataset"] == "digits" and "(digits," in (tmp_path / "collected" / "co_sweep.svg").read_text()


def test_the_autoattack_wrapper_is_timed_beside_the_direct_call_and_agrees_point_by_point():
    bundle = load_dataset("synthetic")
    model = A.train_model(bundle, CPU, epochs=1, max_batches=2)
    x, y = bundle.test.first(6)
    # eps 0.5 breaks every point in AutoAttack's first component: the timing is cheap, the bookkeeping all there
    w = A.bench_wrapper(
        model, x, y, threat=ThreatModel.parse("Linf", "0.5"), batch_size=6, device=CPU, num_classes=10, rounds=1
    )
    assert w["same_per_example"] and w["seconds_ours"] > 0 and w["seconds_direct"] > 0
    assert w["speed_ratio"] == w["seconds_direct"] / w["seconds_ours"]
    assert "speed ratio" in A.wrapper_line(w)


def test_co_sweep_records_a_diverged_point_and_goes_on(tmp_path, monkeypatch):
    """A point whose training fails (GradAlign's extrapolated lambda sent the loss to NaN on
    Fashion-MNIST at eps 0.3) is a result: the sweep goes on to the other points, the table gives
    the error, the figure leaves the point out, and --collect finds it again from env.json."""
    from benchmarks import co_sweep as S

    real = S.run_one

    def diverging(cfg, *, evaluate):
        if cfg["defense"] == "n-fgsm":
            cfg = {**cfg, "train": {**cfg["train"], "lr": 1e30}}
        return real(cfg, evaluate=evaluate)

    monkeypatch.setattr(S, "run_one", diverging)
    argv = ["--dataset", "digits", "--eps", "0.1", "--defenses", "n-fgsm", "fast-at", "--epochs", "1"]
    argv += ["--val-n", "40", "--selection-steps", "3", "--threads", "1"]
    argv += ["--root", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert S.main(argv) == 0
    points = {p["defense"]: p for p in json.loads((tmp_path / "out" / "co_sweep.json").read_text())["points"]}
    assert "nan" in points["n-fgsm"]["failed"] and "failed" not in points["fast-at"]
    assert points["fast-at"]["epochs_run"] == 1
    assert (
        "| n-fgsm | 0.1 | training failed: HarnessError: epoch 1: the training loss is nan"
        in (tmp_path / "out" / "co_sweep.md").read_text()
    )
    svg = (tmp_path / "out" / "co_sweep.svg").read_text()
    assert "fast-at" in svg and "n-fgsm" not in svg
    assert S.main(["--collect", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "collected")]) == 0
    again = json.loads((tmp_path / "collected" / "co_sweep.json").read_text())["points"]
    assert sorted((p["defense"], "failed" in p) for p in again) == [("fast-at", False), ("n-fgsm", True)]


def _co_point(defense: str, eps: str, clean: float, robust: float, co: bool = False) -> Dict[str, Any]:
    return {
        "defense": defense,
        "dataset": "fashion-mnist",
        "eps": eps,
        "eps_value": float(eps),
        "run": f"runs/co-sweep/{defense}-eps{eps}",
        "epochs_run": 10,
        "selection": "PGD-50 CE",
        "n": 1000,
        "last_robust": robust,
        "last_clean": clean,
        "best_epoch": 7,
        "best_robust": max(robust, 0.12),
        "co": co,
        "co_epoch": 1 if co else None,
        "train_attack": "PGD-10 CE",
        "passes_per_epoch": {"forward": 11.0, "backward": 11.0},
        "train_wall_s": 400.0,
    }


def test_co_sweep_renders_from_its_json_alone_and_names_a_model_that_did_not_learn(tmp_path):
    """--render rewrites the table and figure from co_sweep.json (the run directories are gone).
    A constant predictor (clean = robust = 9.1%, as PGD-AT at eps 0.2 measured) is "did not learn",
    not a plain "no" in the catastrophic-overfitting column; a model that learned, or collapsed
    under attack while its clean accuracy stayed up, is not."""
    from benchmarks import co_sweep as S

    points = [
        _co_point("pgd-at", "0.1", 0.864, 0.780),
        _co_point("pgd-at", "0.2", 0.091, 0.091),
        _co_point("fast-at", "0.3", 0.656, 0.0, co=True),
    ]
    (tmp_path / "co_sweep.json").write_text(json.dumps({"dataset": "fashion-mnist", "seed": 0, "points": points}))
    assert S.main(["--render", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "co_sweep.md").read_text()
    assert "| pgd-at | 0.2 | 9.1% | 9.1% | 12.0% (7) | no: did not learn (clean = PGD acc = 9.1%" in table
    assert "| pgd-at | 0.1 | 78.0% | 86.4% | 78.0% (7) | no |" in table
    assert "| fast-at | 0.3 | 0.0% | 65.6% | 12.0% (7) | yes, epoch 1 |" in table
    assert (tmp_path / "co_sweep.svg").read_text().startswith("<svg")
    assert [S.did_not_learn(p) for p in points] == [False, True, False]
    assert S.main(["--render", "--out", str(tmp_path / "missing")]) == 2
