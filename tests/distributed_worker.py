"""Scenarios that tests/test_distributed.py runs under torchrun (a helper, not a test module).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py SCENARIO OUT [ARGS]

- ``kill SETTINGS_JSON RANK EPOCH``: ``run_pipeline`` with the settings; rank RANK kills itself
  (SIGKILL, no clean-up of any kind) once epoch EPOCH's files are all written.
- ``ddp-attack OUT_JSON``: a PGD attack through the DDP wrapper in train mode, then one update
  with unequal parts of a global batch; rank 0 writes what it observed to OUT_JSON.
- ``cli-exit FAILING_RANK OUT_DIR``: ``harness.cli._in_process_group`` with a command that, after
  one collective, fails (status 3) on rank FAILING_RANK (-1: on none) and succeeds elsewhere, rank
  0 only after a while (a writer still at work when the others are done); each rank writes the
  status it returned to OUT_DIR/rank<R>.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

from attacks.pgd import perturb  # noqa: E402
from defenses.base import TrainContext  # noqa: E402
from harness import distributed  # noqa: E402
from harness.core.threat import ThreatModel  # noqa: E402


def kill(settings_json: str, rank: str, epoch: str) -> int:
    from harness.api import resolve_config
    from harness.pipeline import run_pipeline

    cfg = resolve_config(**json.loads(settings_json))

    def die(done: int, row: dict) -> None:
        if done == int(epoch) and distributed.world().rank == int(rank):
            os.kill(os.getpid(), signal.SIGKILL)

    with distributed.session():
        run_pipeline(cfg, on_epoch_end=die, progress=False)
    return 0


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def ddp_attack(out: str) -> int:
    with distributed.session() as world:
        torch.set_num_threads(1)
        cpu = torch.device("cpu")
        model = _model()
        reference = copy.deepcopy(model)  # one process doing the same update on the whole batch
        replica = distributed.Replica(model, device=cpu)
        fired = []
        for p in model.parameters():
            p.register_post_accumulate_grad_hook(lambda p: fired.append(1))
        g = torch.Generator().manual_seed(7)
        x_all, y_all = torch.rand(6, 1, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g)
        parts = [slice(0, 4), slice(4, 6)]  # unequal parts of a global batch of 6
        x, y = x_all[parts[world.rank]], y_all[parts[world.rank]]
        threat = ThreatModel.parse("Linf", "0.1")
        replica.ddp.train()
        x_adv = perturb(
            replica.ddp, x, y, threat=threat, steps=3, step_size=0.05, generator=torch.Generator().manual_seed(1)
        )
        after_attack = {"hooks_fired": len(fired), "grads_none": all(p.grad is None for p in model.parameters())}
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        replica.share = y.numel() / y_all.numel()
        step = TrainContext(optimizer, None, torch.Generator(), cpu)
        step.step(nn.functional.cross_entropy(replica.ddp(x_adv), y))
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        every = distributed.all_gather_object(flat)
        advs = distributed.all_gather_object(x_adv)
        if world.is_writer:
            ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
            ref_opt.zero_grad()
            loss = sum(
                nn.functional.cross_entropy(reference(a), y_all[s]) * (y_all[s].numel() / 6)
                for a, s in zip(advs, parts)
            )
            loss.backward()
            ref_opt.step()
            ref = torch.cat([p.detach().flatten() for p in reference.parameters()])
            Path(out).write_text(
                json.dumps(
                    {
                        **after_attack,
                        "ranks_equal": bool(torch.equal(every[0], every[1])),
                        "max_diff_to_global_batch": float((every[0] - ref).abs().max()),
                        "moved": float(
                            (every[0] - torch.cat([p.detach().flatten() for p in _model().parameters()])).abs().max()
                        ),
                        "backend": dist.get_backend(),
                    }
                )
            )
    return 0


def cli_exit(failing_rank: str, out_dir: str) -> int:
    import argparse
    import time

    from harness import cli

    def command(parser, args, prefix=""):
        rank = distributed.world().rank
        distributed.all_gather_object(rank)
        if rank == int(failing_rank):
            return 3
        if rank == 0:
            time.sleep(1.0)
        return 0

    cli._dispatch = command
    code = cli._in_process_group(argparse.ArgumentParser(), argparse.Namespace(verbose=0))
    Path(out_dir, f"rank{os.environ['RANK']}").write_text(str(code))
    return code


if __name__ == "__main__":
    scenario, *rest = sys.argv[1:]
    raise SystemExit({"kill": kill, "ddp-attack": ddp_attack, "cli-exit": cli_exit}[scenario](*rest))
