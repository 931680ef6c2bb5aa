"""``sparse-reg`` command line: argument parsing and dispatch only; each subcommand's work is a function of
:mod:`sparse_reg.commands`, which takes values, never the parsed namespace."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys

from .data.dataset import DatasetError
from .provenance import parse_count
from .training.run_directory import RunInUseError


def _int(text: str) -> int:
    """Integers with optional k/M suffix or underscores: 10k, 1M, 200_000."""
    try:
        return parse_count(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: '{text}'") from None


def _option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


class Parser(argparse.ArgumentParser):
    """Every option's help shows its default; a usage error is one line, like every other error."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"sparse-reg: error: {message} (see '{self.prog} --help')\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help (not for flags or options without one); epilogs kept as written."""

    def _get_help_string(self, action):
        default = action.default
        if default is None or default is False or default == [] or default == argparse.SUPPRESS or \
                "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


TRAIN_EXAMPLES = """examples:
  sparse-reg train --algo iql --dataset halfcheetah-expert-v0 --size 10k --out runs/iql-sparse
  sparse-reg train --algo iql --sparsity 0 --out runs/iql-dense            # the dense baseline
  sparse-reg train --algo td3bc --dataset data.npz --env Hopper-v5 --set alpha=2.5 --out runs/td3bc
  sparse-reg train --algo bc --seeds 0,1,2,3,4 --out runs/bc               # runs/bc/seed_0 ... seed_4
  sparse-reg train --out runs/iql-sparse --resume                          # continue after an interruption
"""


# Options whose flag is not the field's name.
CLI_NAMES = {"algo_options": "--set"}


def add_run_arguments(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """One option per :class:`RunConfig` field, with the field's default and help (``defaults``
    False: no defaults, so that a parse holds only the options given)."""
    from .training.config import COUNT_FIELDS, RunConfig

    for f in dataclasses.fields(RunConfig):
        flag = CLI_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        help = f.metadata["help"].replace("%", "%%")
        kwargs = dict(dest=f.name, help=help, **f.metadata["cli"])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name == "algo_options":
            keys = "; ".join(f"{algo}: {', '.join(names)}" for algo, names in RunConfig.algorithm_options().items())
            kwargs.update(type=_option, action="append", default=[], metavar="KEY=VALUE",
                          help=help + f" (repeatable). Keys: {keys}")
        elif isinstance(default, bool):
            kwargs.update(action="store_true")
        elif isinstance(default, tuple):
            kwargs.update(type=_int, nargs="+", default=list(default))
        elif f.name in COUNT_FIELDS:
            kwargs.update(type=_int, default=default)
        elif isinstance(default, int):  # bools were handled above
            kwargs.update(type=int, default=default)
        elif isinstance(default, float):
            kwargs.update(type=float, default=default)
        else:
            kwargs.update(default=default)
        if not defaults:
            kwargs["default"] = argparse.SUPPRESS
        p.add_argument(flag, **kwargs)


def _field_values(values: dict) -> dict:
    """Parsed option values as RunConfig takes them."""
    converters = {"size": lambda v: v or None, "hidden_dims": tuple, "algo_options": dict}
    return {k: converters.get(k, lambda v: v)(v) for k, v in values.items()}


def run_config_from_args(args: argparse.Namespace):
    from .training.config import RunConfig

    return RunConfig(**_field_values({f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)}))


def given_run_options(argv: list[str]) -> dict:
    """The RunConfig fields that ``train``'s command line ``argv`` sets itself (not left at their default)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_run_arguments(parser, defaults=False)
    return _field_values(vars(parser.parse_known_args(argv)[0]))


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated integers, e.g. 0,1,2, got '{text}'")
    return seeds


def cmd_train(args: argparse.Namespace) -> int:
    from .commands import train_command

    given = given_run_options(args.argv) if args.resume else {}
    return train_command(run_config_from_args(args), args.out, seeds=args.seeds, parallel=args.parallel,
                         resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress, given=given)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .commands import evaluate_command

    return evaluate_command(args.path, checkpoint=args.checkpoint, episodes=args.episodes, seed=args.seed,
                            as_json=args.json)


def cmd_export_policy(args: argparse.Namespace) -> int:
    from .commands import export_policy_command

    return export_policy_command(args.path, args.out, checkpoint=args.checkpoint)


def cmd_datasets(args: argparse.Namespace) -> int:
    from .commands import datasets_list_command, datasets_make_command

    if args.action == "list":
        datasets_list_command()
    else:
        for name in args.names:
            datasets_make_command(name, seed=args.seed, force=args.force)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .commands import demo_command

    return demo_command(args.out, steps=args.steps, size=args.size, dataset=args.dataset, record=args.record)


def _sweep_options(args: argparse.Namespace) -> dict:
    """The options ``sweep`` and ``reproduce`` share, as the keyword arguments of their commands."""
    return dict(budget=args.budget, runs_dir=args.runs_dir, backend=args.backend, address=args.address,
                workers=args.workers, progress=not args.no_progress, only=args.only, reuse=args.reuse)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .commands import sweep_command

    return sweep_command(args.config, dry_run=args.dry_run, **_sweep_options(args))


def cmd_experiments(args: argparse.Namespace) -> int:
    from .commands import experiments_list_command

    experiments_list_command()
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .commands import reproduce_command

    return reproduce_command(args.name, report_dir=args.report_dir, **_sweep_options(args))


def cmd_report(args: argparse.Namespace) -> int:
    from .commands import report_command

    return report_command(args.runs_dir, args.out, args.paper_csv, include_paper=not args.no_paper,
                          reps=args.bootstrap_reps, seed=args.seed, mse_algos=tuple(args.mse_algos.split(",")))


def cmd_export(args: argparse.Namespace) -> int:
    from .commands import export_command

    return export_command(args.runs_dir, args.out)


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: one pinned process per core (CPU) or vmapped seeds (accelerator); ray: a task per run")
    p.add_argument("--address", default=None,
                   help="Ray cluster address ('auto' = the running cluster); default: start a local Ray instance")
    p.add_argument("--runs-dir", default=None, help="where runs go: RUNS/<experiment>/<cell>/seed_<s> "
                   "(default: runs/<budget>)")
    p.add_argument("--workers", type=int, default=None, help="local backend on a CPU: run on this many cores "
                   "(default: every core this process may use; fewer: the least busy ones when the sweep starts), "
                   "e.g. to leave some free on a shared machine or run two sweeps side by side")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE[,VALUE]",
                   help="run only the matching runs; KEY: a grid axis (dataset, size, algo, ...), variant, seed "
                   "or cell; wildcards and 5k/1M allowed; repeat to narrow (e.g. --only dataset=hopper-* --only seed=0)")
    p.add_argument("--reuse", action="append", default=[], metavar="DIR",
                   help="copy, instead of running, any run that a finished run under DIR already computed (same "
                   "algorithm, data, size, seed and settings; e.g. --reuse runs/quick: experiments share cells); repeatable")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: one line per run as it ends (its score and wall time), for a log file")


def add_checkpoint_argument(parser) -> None:
    from .training.run_directory import CHECKPOINT_FILES

    parser.add_argument("--checkpoint", choices=list(CHECKPOINT_FILES), default="latest",
                        help="which of the run's agents: the last evaluation's, or the one of its lowest validation "
                        "action MSE (runs trained with --keep-lowest-validation-mse)")


def add_report_arguments(parser) -> None:
    """Arguments of ``sparse-reg report`` (argparse parser)."""
    parser.add_argument("runs_dir", help="directory searched (recursively) for run directories with summary.json")
    parser.add_argument("--out", default=None, help="report directory (default: RUNS_DIR/report)")
    parser.add_argument("--paper-csv", default=None, help="the paper's tables as CSV (default: the packaged copy)")
    parser.add_argument("--no-paper", action="store_true", help="leave the paper's numbers out")
    parser.add_argument("--bootstrap-reps", type=int, default=2000, help="bootstrap replicates for the IQM CIs")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--mse-algos", default="bc", help="comma-separated algorithms whose actors get the train / "
                        "validation action-MSE table and figures (default: bc, as the paper; e.g. bc,iql,awac)")


def add_export_arguments(parser) -> None:
    """Arguments of ``sparse-reg export`` (argparse parser)."""
    parser.add_argument("runs_dir", help="directory searched (recursively) for finished runs (with summary.json)")
    parser.add_argument("--out", required=True, help="where the copies go (relative paths are kept)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sparse-reg", description="Offline RL on small datasets with Sparse-Reg.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train one agent", epilog=TRAIN_EXAMPLES)
    add_run_arguments(p)
    p.add_argument("--out", required=True, help="run directory (with --seeds: one sub-directory seed_<s> per seed)")
    p.add_argument("--seeds", type=_seeds, default=None, help="several seeds in one command, e.g. 0,1,2,3,4")
    p.add_argument("--parallel", choices=["auto", "vmap", "processes", "sequential"], default="auto",
                   help="how --seeds run: vmap on an accelerator, one pinned process per core on CPU (auto)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="re-evaluate a saved agent")
    p.add_argument("path", help="run directory or its checkpoint file")
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes")
    p.add_argument("--seed", type=int, default=0, help="environment seed of the first episode")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_checkpoint_argument(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export-policy", help="write a saved agent's deterministic policy (normaliser included) "
                       "as a jax.export file that runs with jax and numpy only")
    p.add_argument("path", help="run directory or its checkpoint file")
    p.add_argument("--out", required=True, help="file to write, e.g. policy.jaxexport")
    add_checkpoint_argument(p)
    p.set_defaults(func=cmd_export_policy)

    p = sub.add_parser("datasets", help="list or build the project's MuJoCo datasets")
    p.add_argument("action", choices=["list", "make"], help="list the datasets, or build some")
    p.add_argument("names", nargs="*", help="datasets to build (make), or 'all'")
    p.add_argument("--seed", type=int, default=0, help="build seed")
    p.add_argument("--force", action="store_true", help="rebuild even if it exists")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("demo", help="dense vs Sparse-Reg, BC and IQL, on a small budget")
    p.add_argument("--out", default="runs/demo", help="directory of the demo's runs and figure")
    p.add_argument("--dataset", default="halfcheetah-expert-v0", help="dataset name or path")
    p.add_argument("--size", type=_int, default=10_000, help="training transitions")
    p.add_argument("--steps", type=_int, default=20_000, help="gradient steps per run")
    p.add_argument("--record", action="store_true", help="then copy its table and figure into docs/ and the "
                   "README's demo block (run from the repository root; what `make demo-record` does)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", help="run a paper experiment's grid of runs (skips finished runs, resumes others)")
    p.add_argument("config", help="packaged experiment name (see 'experiments list') or a .toml path")
    p.add_argument("--budget", default="quick", help="a [budgets.<name>] of the config: quick (short runs), paper "
                   "(the paper's protocol) or another it defines (e.g. table1's long)")
    add_sweep_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="list the runs and what would happen to each")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("experiments", help="list the packaged paper experiments")
    p.add_argument("action", choices=["list"], help="list them")
    p.set_defaults(func=cmd_experiments)

    p = sub.add_parser("reproduce", help="sweep a paper experiment, then write its report")
    p.add_argument("name", help="packaged experiment name or a .toml path")
    p.add_argument("--budget", required=True, help="a [budgets.<name>] of the config: quick (short runs), paper "
                   "(the paper's protocol) or another it defines")
    add_sweep_arguments(p)
    p.add_argument("--report-dir", default=None, help="default: reports/<budget>/<experiment>")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("report", help="tables and figures (Markdown, LaTeX, PNG) for a directory of runs")
    add_report_arguments(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="copy finished runs' results (config, summary, metrics, masks) without "
                       "checkpoints, e.g. to commit them")
    add_export_arguments(p)
    p.set_defaults(func=cmd_export)
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("sparse-reg")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.argv = argv
    from .training.compile_cache import enable_compilation_cache

    enable_compilation_cache()  # before anything compiles
    if args.command == "datasets" and args.action == "make" and not args.names:
        parser.error("datasets make needs at least one NAME")
    previous = _terminate_as_interrupt()
    try:
        return args.func(args)
    except (ValueError, DatasetError, RunInUseError, OSError, ImportError) as error:
        # Every error the project raises for bad input, damaged files or a refused run, what the
        # system says (read-only file system, full disk) and a missing optional package: one line.
        print(f"sparse-reg: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print("sparse-reg: interrupted (resume with --resume)", file=sys.stderr)
        return 143 if isinstance(interrupt, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (e.g. ``kill``, a job scheduler's stop): ends the command like Ctrl-C does."""


def _terminate_as_interrupt():
    """Make SIGTERM raise :class:`Terminated` in the main thread; returns the handler it replaced
    (None where signals cannot be handled here)."""
    def terminated(signum, frame):
        raise Terminated

    try:
        return signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread
        return None


def _one_line(error: BaseException) -> str:
    """An error as one line: an OSError as ``FILE: what happened``."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        text = f"{error.filename}: {error.strerror}"
        if error.filename2 is not None:
            text = f"{error.filename} -> {error.filename2}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
