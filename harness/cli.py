"""The ``harness`` command line. It parses and hands off; the logic lives in the library.

Flags are declared with ``default=argparse.SUPPRESS`` so a flag the user did not type is absent,
never a falsy value that overrides a config file. Every ``HarnessError`` becomes one line on
stderr and a non-zero exit.

Under torchrun (``torchrun --nproc-per-node N -m harness run|eval|audit ...``) every process runs
the command inside one process group (``harness.distributed.session``); rank 0 prints the
results and logs, the others log warnings and errors only, each line marked with its rank.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Any, Dict, MutableMapping, Optional, Sequence

from harness.core.errors import HarnessError
from harness.core.rundir import RunDir
from harness.logs import setup_logging
from reports.summaries import eval_summary_lines, run_summary_lines

log = logging.getLogger("harness")
S = argparse.SUPPRESS


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return v


def _seed(text: str) -> int:
    """A seed from 0 to ``harness.core.seeds.MAX_SEED`` (no seed derived from it overflows)."""
    from harness.core.errors import ConfigError
    from harness.core.seeds import check_seed

    v = _nonneg_int(text)
    try:
        return check_seed(v)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _common_eval_flags(p: argparse.ArgumentParser, *, config_dests: bool) -> None:
    pre = "eval." if config_dests else ""
    p.add_argument("--suite", dest=f"{pre}suite", default=S, help="evaluation suite (harness ls suites)")
    # torchrun reads "--n" as an ambiguous abbreviation of its own options: under torchrun write --n-points
    p.add_argument(
        "--n",
        "--n-points",
        dest=f"{pre}n",
        type=_positive_int,
        default=S,
        help="number of test examples (the first n, fixed order); --n-points under torchrun",
    )
    p.add_argument(
        "--eval-batch-size", dest=f"{pre}batch_size", type=_positive_int, default=S, help="batch size for attacks"
    )
    p.add_argument(
        "--adaptive",
        dest=f"{pre}adaptive",
        default=S,
        metavar="auto|off|REMEDY,...",
        help="after the suite, the remedy of every check that fails or warns (auto, the default), none (off), or the "
        "named remedies (harness ls remedies)",
    )
    p.add_argument(
        "--bpda",
        dest=f"{pre}bpda",
        action="append",
        default=S,
        metavar="MODULE[=identity|diagonal|FILE.py:FN]",
        help="bypass this module in the backward pass (BPDA), with the identity, its measured derivative or your "
        "own differentiable stand-in; repeatable",
    )
    p.add_argument(
        "--eot", dest=f"{pre}eot", type=_positive_int, default=S, help="EOT samples per gradient for a randomised model"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description="Evaluation-first benchmarking harness for adversarial training.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in (_add_ls, _add_run, _add_eval, _add_report, _add_sweep, _add_audit, _add_export):
        add(sub)
    return parser


def _add_ls(sub: Any) -> None:
    p = sub.add_parser(
        "ls", help="list what is registered (defenses, attacks, checks, suites, datasets, models, renderers)"
    )
    p.add_argument("kind", nargs="?", help="one registry to list")


# size: one add_argument per flag of harness run, in the order --help shows them
def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="train with a defense, select on val, evaluate best and last, write the report")
    p.add_argument("--defense", dest="defense", default=S, help="defense plugin (harness ls defenses); default fast-at")
    p.add_argument("--dataset", dest="dataset", default=S, help="data set (harness ls datasets); default fashion-mnist")
    p.add_argument("--model", dest="model", default=S, help="model (harness ls models); default small-cnn")
    p.add_argument(
        "--eps", dest="threat.eps", default=S, help="perturbation budget in [0,1] pixel units, e.g. 0.1 or 8/255"
    )
    p.add_argument("--norm", dest="threat.norm", default=S, help="Linf or L2")
    p.add_argument("--epochs", dest="train.epochs", type=_positive_int, default=S)
    p.add_argument("--batch-size", dest="train.batch_size", type=_positive_int, default=S)
    p.add_argument("--lr", dest="train.lr", type=_positive_float, default=S, help="(peak) learning rate")
    p.add_argument(
        "--sync-bn",
        dest="train.sync_bn",
        action="store_true",
        default=S,
        help="under torchrun: SyncBatchNorm over the global batch (CUDA only; default: BatchNorm per process)",
    )
    p.add_argument("--seed", dest="seed", type=_seed, default=S)
    p.add_argument("--device", dest="device", default=S, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", dest="precision", default=S, help="auto, fp32, bf16 or fp16 (mixed precision on GPU)")
    p.add_argument(
        "--threads",
        dest="threads",
        type=_positive_int,
        default=S,
        help="CPU threads for torch (default: torch's choice, one per core); a resumed run keeps its count",
    )
    p.add_argument(
        "--memory-format",
        dest="memory_format",
        default=S,
        help="auto, contiguous or channels_last (auto: channels-last on CUDA, contiguous elsewhere)",
    )
    p.add_argument("--data-dir", dest="data.data_dir", default=S, help="folder holding the data set files")
    p.add_argument(
        "--val-size",
        dest="data.val_size",
        type=_nonneg_int,
        default=S,
        help="examples held out from train for selection",
    )
    p.add_argument("--no-download", dest="data.download", action="store_false", default=S, help="never download data")
    _common_eval_flags(p, config_dests=True)
    p.add_argument("--out", dest="out.root", default=S, help="folder for run directories (default runs/)")
    p.add_argument(
        "--log",
        dest="log",
        action="append",
        default=S,
        metavar="LOGGER",
        help="mirror the metrics to a tracker: tensorboard, wandb or disk (repeatable; see harness ls loggers)",
    )
    p.add_argument("--name", dest="out.name", default=S, help="run directory name (default: made from the config)")
    es = p.add_mutually_exclusive_group()
    es.add_argument(
        "--early-stop",
        dest="monitor.early_stop",
        action="store_true",
        default=S,
        help="stop on catastrophic overfitting",
    )
    es.add_argument("--no-early-stop", dest="monitor.early_stop", action="store_false", default=S)
    p.add_argument("--config", dest="_config", default=S, help="TOML or JSON config file (a saved config.json works)")
    p.add_argument(
        "--set",
        dest="_set",
        action="append",
        default=S,
        metavar="KEY=VALUE",
        help="any config value, e.g. --set defense_options.step_size=1.25*eps (repeatable)",
    )
    p.add_argument(
        "--resume", dest="_resume", default=S, metavar="RUN_DIR", help="continue a killed run from its last checkpoint"
    )
    p.add_argument(
        "--recipe-variant",
        dest="recipe.variant",
        default=S,
        metavar="NAME",
        help="a named variant of the defense's recipe ('a+b' combines; --dry-run lists a recipe's variants, as "
        "released and apex-o2 of fast-at on cifar10)",
    )
    p.add_argument(
        "--dry-run",
        dest="_dry_run",
        action="store_true",
        default=S,
        help="print the resolved config (stdout) and what it means, with every value's source (stderr), and exit",
    )


def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate a run's checkpoints with a suite")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", default="best", help="best, last, epoch-N or all (default best)")
    _common_eval_flags(p, config_dests=False)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=_seed, default=None, help="attack seed (default: the run's seed)")
    p.add_argument("--force", action="store_true", help="re-run even if a finished result exists")


def _add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="render one run's report, or a comparison table over runs")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--format", choices=["md", "tex", "csv", "html"], default=None, help="comparison table format")
    p.add_argument("-o", "--output", default=None, help="write the table here instead of stdout")
    p.add_argument("--baseline", default=None, metavar="DEFENSE", help="paired tests of each row against this one")
    p.add_argument("--plots", default=None, metavar="DIR", help="write the comparison's SVG figures into DIR")
    p.add_argument("--leaderboard", default=None, metavar="FILE", help="write the leaderboard page (HTML) to FILE")


def _add_sweep(sub: Any) -> None:
    from harness.sweep import add_arguments as add_sweep_arguments

    p = sub.add_parser("sweep", help="run a grid of runs (defenses x seeds x eps ...) locally or on Slurm")
    add_sweep_arguments(p)
    p.add_argument("--baseline", default=None, metavar="DEFENSE", help="the comparison's paired tests against it")


def _add_audit(sub: Any) -> None:
    p = sub.add_parser(
        "audit",
        help="re-evaluate someone else's model and checkpoint against a claimed number",
        description="Re-evaluate a model and checkpoint with a suite and the sanity checks, and say whether a claimed "
        "robust accuracy holds. Checkpoints are loaded as data, never code. Writes audit.md, audit.html and "
        "audit.json. The suite defaults to 'standard'. Exit status: 0 the claim holds, 1 overstated or the evaluation "
        "is unreliable, 2 error.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="FILE.py:FACTORY (a Python file you chose to run) or a registered model name")
    src.add_argument("--robustbench", help="a RobustBench model-zoo name (weights from --model-dir)")
    p.add_argument("--checkpoint", help="weights: .safetensors, or a state dict loaded with weights_only=True")
    p.add_argument(
        "--model-dir",
        default=None,
        help="local RobustBench model directory, laid out MODEL_DIR/DATASET/THREAT/NAME.pt (default ./models)",
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--eps", required=True)
    p.add_argument("--norm", default="Linf")
    p.add_argument(
        "--claim", required=True, help="claimed robust accuracy as a fraction (0.53) or percent (53 or 53%%)"
    )
    p.add_argument(
        "--claim-attack",
        default=None,
        help="the attack behind the claim, e.g. 'PGD-20', 'PGD-100 x5 restarts', 'AutoAttack'",
    )
    p.add_argument(
        "--normalize",
        default=None,
        metavar="dataset|MEAN:STD",
        help="put a Normalize layer in front of a model that expects normalised input (recorded in the audit)",
    )
    _common_eval_flags(p, config_dests=False)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", default=None, help="folder for the audit report (default audits/NAME-TIMESTAMP)")
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="end the audit (exit 2) if it has not finished by then (default: 30 min plus a per-point allowance for "
        "the suite: 20 s a point for quick, 60 s a point for standard)",
    )
    p.add_argument(
        "--input-range",
        choices=["01"],
        default=None,
        help="overrule the input-scale guard rails: the model takes [0,1] images (recorded in the audit)",
    )


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="export a run's checkpoint: RobustBench model card, safetensors weights, loader")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=["robustbench"], default="robustbench")
    p.add_argument("-o", "--output", required=True, help="folder to write into")
    p.add_argument("--checkpoint", default="best", help="best (default), last or epoch-N")
    p.add_argument(
        "--suite", default=None, help="the evaluation to take the numbers from (default: one with AutoAttack)"
    )
    p.add_argument(
        "--model-id", default=None, help="RobustBench file name, e.g. Smith2026Robust (default: the run's name)"
    )
    for flag, what in (
        ("--title", "name (the paper's title)"),
        ("--link", "link"),
        ("--authors", "authors"),
        ("--venue", "venue"),
    ):
        p.add_argument(flag, default=None, help=f"the card's {what}")
    p.add_argument(
        "--force",
        action="store_true",
        help="export even an unfinished run, or an evaluation whose verdict is unreliable (the card says so)",
    )


def _version() -> str:
    from harness.core.version import __version__

    return f"harness {__version__}"


def _api() -> Any:
    """The library behind the commands, imported once a command runs: ``harness --help`` and
    argument errors then answer without loading torch."""
    from harness import api

    return api


def cmd_ls(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from harness.plugins import all_registries, registry_for

    regs = [registry_for(args.kind)] if args.kind else list(all_registries().values())
    console = Console()
    for reg in regs:
        table = Table(title=reg.kind, title_justify="left", show_header=False, box=None, pad_edge=False)
        table.add_column("name", style="bold")
        table.add_column("summary")
        for e in reg.entries():
            table.add_row(e.name, e.summary)
        console.print(table)
        console.print()
    return 0


def cmd_run(ns: MutableMapping[str, Any]) -> int:
    api = _api()
    resume = ns.pop("_resume", None)
    dry = ns.pop("_dry_run", False)
    config = ns.pop("_config", None)
    sets = api.C.parse_set(ns.pop("_set", []))
    settings = {**ns, **sets}  # --set wins over the flags
    if resume is not None:
        if settings or config is not None:
            raise HarnessError("--resume continues a run with its saved config; other flags cannot be combined with it")
        run = api.train(resume=resume)
    elif dry:
        from harness.recipes import dry_run_report

        file_cfg = api.C.load_config_file(config) if config is not None else {}
        cfg = api.resolve_config(file_cfg, **settings)
        _check_as_a_run_would(cfg)
        sys.stdout.write(api.config_text(cfg))
        sys.stdout.flush()
        # stdout stays a valid --config; what it means, with each value's source, goes to stderr
        sys.stderr.write(dry_run_report(cfg, api.C.settings_to_flags(settings), file_cfg, config))
        return 0
    else:
        run = api.train(config=config, **settings)
    _print_run_summary(run.outcome)
    return 0


def _check_as_a_run_would(cfg: Dict[str, Any]) -> None:
    """What ``harness run`` refuses before it trains and ``--dry-run`` must refuse too: a logger
    whose package is missing, and under torchrun a global batch the processes cannot share."""
    from harness import distributed
    from harness.loggers import build_loggers

    build_loggers(cfg)
    distributed.per_rank_batch(int(cfg["train"]["batch_size"]))


def cmd_eval(args: argparse.Namespace) -> int:
    api = _api()
    done = api.evaluate_run(
        args.run_dir,
        checkpoints=[args.checkpoint],
        suite=getattr(args, "suite", None),
        n=getattr(args, "n", None),
        batch_size=getattr(args, "batch_size", None),
        device=args.device,
        seed=args.seed,
        force=args.force,
        adaptive=getattr(args, "adaptive", None),
        bpda=getattr(args, "bpda", None),
        eot=getattr(args, "eot", None),
        progress=sys.stderr.isatty(),
    )
    run = RunDir(args.run_dir)
    for ev, how in done:
        doc = ev.to_json()
        sys.stdout.write("\n".join(eval_summary_lines(doc)) + "\n")
        where = run.eval_result_path(doc["suite"], doc["checkpoint"])
        said = {"evaluated": "written", "stored": "stored result for these weights, not re-run (--force re-runs)"}
        sys.stdout.write(f"  {said.get(how, 'written (' + how + ')')}: {where}\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from reports.cli import report_command

    return report_command(
        args.runs,
        fmt=args.format,
        output=args.output,
        baseline=args.baseline,
        plots=args.plots,
        leaderboard=args.leaderboard,
    )


def cmd_audit(args: argparse.Namespace) -> int:
    from harness.audit.run import audit_command

    return audit_command(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    from harness.sweep import sweep_command
    from reports.cli import sweep_options

    with sweep_options(baseline=args.baseline):
        return sweep_command(args)


def _print_run_summary(outcome: Any) -> None:
    docs = [r for r, _ in outcome.results]
    sys.stdout.write("\n".join(run_summary_lines(outcome.run.path, outcome.training, docs)) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if os.environ.get("HARNESS_PLUGINS"):  # the user's own plugin files (harness.plugins)
        from harness.plugins import load_user_plugins

        try:
            load_user_plugins()
        except HarnessError as e:
            sys.stderr.write(f"harness: error: {e}\n")
            return e.exit_code
    if args.command in ("run", "eval", "audit"):
        return _in_process_group(parser, args)
    setup_logging(args.verbose)
    return _dispatch(parser, args)


def _in_process_group(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """A command that may run under torchrun: joined to its process group for the duration (a
    no-op in one process); rank 0 prints the results, the other ranks' stdout goes nowhere."""
    from harness import distributed  # torch is imported only by the commands that need it

    try:
        with contextlib.ExitStack() as stack:
            try:
                world = stack.enter_context(distributed.session())
            except HarnessError as e:
                sys.stderr.write(f"harness: error: {e}\n")
                return e.exit_code
            except (RuntimeError, ValueError) as e:  # torchrun's rendezvous or the backend refused us
                sys.stderr.write(f"harness: error: could not join the torchrun process group: {e}\n")
                return 2
            setup_logging(args.verbose, world.rank if world.distributed else None)
            prefix = ""
            if not world.is_writer:
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
                prefix = f"[rank {world.rank}] "
            code = _dispatch(parser, args, prefix=prefix)
            if code != 0:
                raise _RankFailed(code)  # leave the group at once: the other ranks may never arrive
            return code  # session() waits here for every rank before it leaves the group
    except _RankFailed as failed:
        return failed.code
    except RuntimeError as e:  # the closing barrier: a peer died after this rank finished
        sys.stderr.write(f"harness: error: another rank did not finish: {e}\n")
        return 1


class _RankFailed(Exception):
    """This rank's command ended with a non-zero status: its process group is left without the
    closing barrier, which would wait for ranks that may be stuck or gone."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace, prefix: str = "") -> int:
    """Run the command; every error ends as one line on stderr and an exit status."""
    try:
        if args.command == "ls":
            return cmd_ls(args)
        if args.command == "run":
            return cmd_run({k: v for k, v in vars(args).items() if k not in ("command", "verbose")})
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "audit":
            return cmd_audit(args)
        if args.command == "sweep":
            return cmd_sweep(args)
        if args.command == "export":
            from harness.export import export_command

            return export_command(args)
    except HarnessError as e:
        sys.stderr.write(f"{prefix}harness: error: {e}\n")
        return e.exit_code
    except OSError as e:
        # a full disk, a read-only folder, --out onto a file: one line; files already written stay
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        sys.stderr.write(f"{prefix}harness: error: {e.strerror or e}{where}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(
            f"{prefix}harness: interrupted; finished files are kept (harness run --resume RUN_DIR continues a run)\n"
        )
        return 130
    parser.error(f"unknown command {args.command}")
    return 2
