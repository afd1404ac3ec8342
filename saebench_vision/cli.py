"""The ``saebench`` command: run, validate, plugins, leaderboard, layers.

Start-up stays light: nothing here imports torch, transformers, diffusers or open_clip; ``run``
imports them only when a cell actually has to be computed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from saebench_vision import __version__
from saebench_vision.errors import SaebenchError

EXIT_ERROR = 2


def _manager() -> Any:
    from saebench_vision.plugins import get_plugin_manager

    return get_plugin_manager()


def _load(path: str, manager: Any, output: str | None = None) -> Any:
    from saebench_vision.suite import load_suite

    return load_suite(path, manager.registry(), output=output)


def cmd_run(args: argparse.Namespace) -> int:
    from saebench_vision.threads import configure_threads

    # Before torch loads: OpenMP reads its thread count and wait policy once.
    threads = configure_threads(args.threads)
    from saebench_vision.runner import Runner

    manager = _manager()
    suite = _load(args.suite, manager, args.output)
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else None
    runner = Runner(
        suite,
        manager,
        cache_dir=cache_dir,
        # A bar on a terminal; plain lines (per 10% or per minute) in a log file.
        progress=False if args.no_progress else (True if sys.stderr.isatty() else "log"),
        argv=sys.argv,
    )
    print(threads.describe(), file=sys.stderr)
    summary = runner.run()
    print(
        f"{summary.computed_cells} of {summary.total_cells} cells computed in {summary.seconds:.1f} s "
        f"(run {summary.run_id})",
        file=sys.stderr,
    )
    _print_board(runner.store, suite.hash, suite.name, args, out=None, summary=True)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from saebench_vision.runner import plan_suite, preflight

    manager = _manager()
    suite = _load(args.suite, manager)
    checked = "names, options and types"
    if not args.light:
        preflight(suite, manager, datasets=args.datasets)
        checked += ", devices, layer names, input and token kinds" + (
            ", datasets" if args.datasets else ""
        )
    plan = plan_suite(suite, manager)
    print(
        f"{suite.path}: ok ({checked} checked) - {len(suite.models)} model(s), "
        f"{sum(len(m.layers) for m in suite.models)} layer(s), {len(suite.sae_variants())} SAE(s), "
        f"{len(suite.evaluators)} evaluator(s), {len(suite.seeds)} seed(s): {len(plan.cells)} cells "
        f"(suite hash {suite.hash})"
    )
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    manager = _manager()
    rows = manager.plugin_info()
    if args.json:
        print(
            json.dumps(
                {"plugins": rows, "failures": [f.__dict__ for f in manager.failures]}, indent=2
            )
        )
        return 0
    from tabulate import tabulate

    table = []
    for r in rows:
        comps = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["components"].items())
        table.append(
            [r["name"], f"{r['distribution']} {r['version']}".strip(), ", ".join(r["hooks"]), comps]
        )
    print(
        tabulate(
            table, headers=["plugin", "distribution", "hooks", "components"], tablefmt="simple"
        )
    )
    for f in manager.failures:
        print(f"FAILED {f.name} ({f.distribution}): {f.error}")
    if args.verbose:
        from saebench_vision.config import config_fields, describe_type, field_types

        registry = manager.registry()
        for kind in ("model", "sae", "dataset", "evaluator"):
            for entry in registry.entries(kind):
                print(f"\n{kind} `{entry.name}` ({entry.plugin}): {entry.ref.target}")
                cfg = entry.config_class()
                declared = _declared_kinds(kind, cfg)
                if declared:
                    print(f"  ({declared})")
                types = field_types(cfg)
                for name, f in config_fields(cfg).items():
                    default = f.default if f.default is not f.default_factory else "(required)"
                    print(
                        f"  {name}: {describe_type(types[name])} = {default!r}  {f.metadata.get('help', '')}"
                    )
    return 0


def _declared_kinds(kind: str, config: type) -> str:
    """What a component's light Config declares about its inputs (nothing is imported)."""
    if kind == "model":
        inputs = getattr(config, "input_kind", None)
        tokens = getattr(config, "default_tokens", None)
        parts = [f"reads {inputs}" if inputs else "", f"default tokens: {tokens}" if tokens else ""]
        return ", ".join(p for p in parts if p)
    if kind == "dataset":
        modality = getattr(config, "modality", None)
        return f"gives {modality} items" if modality else ""
    return ""


def cmd_layers(args: argparse.Namespace) -> int:
    import yaml

    from saebench_vision.config import build_config

    manager = _manager()
    entry = manager.registry().get("model", args.model)
    overrides = {}
    for item in args.arg or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SaebenchError(f"--arg {item!r}: write KEY=VALUE, e.g. --arg variant=lite0")
        overrides[key] = yaml.safe_load(value)
    cls = entry.load()
    adapter = cls(build_config(cls.Config, overrides, where="--arg", what=f"model `{args.model}`"))
    for layer in adapter.layer_names():
        print(layer)
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from saebench_vision.results import open_store

    target = Path(args.target) if args.target is not None else find_results_folder(Path("."))
    suite_name = None
    if target.is_file():
        manager = _manager()
        suite = _load(str(target), manager, args.results)
        store = open_store(suite.output, must_exist=True)
        suite_hash, suite_name = suite.hash, suite.name
    else:
        store = open_store(target, must_exist=True)
        suite_hash = args.suite_hash or store.latest_suite_hash()
        suite_name = store.suite_name(suite_hash)
    _print_board(store, suite_hash, suite_name, args, out=args.out)
    return 0


def find_results_folder(here: Path) -> Path:
    """The results folder ``saebench leaderboard`` reads when given none: ``here`` if it holds
    a results database, else the only ``saebench-results/*/`` that does; several are an error
    that lists them."""
    from saebench_vision.results import DB_NAME

    if (here / DB_NAME).exists():
        return here
    found = sorted(p.parent for p in (here / "saebench-results").glob(f"*/{DB_NAME}"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise SaebenchError(
            f"no results database in {here.resolve()} or under ./saebench-results/; pass a suite "
            f"file or its output folder, e.g. `saebench leaderboard saebench-results/quickstart`"
        )
    listing = "\n".join(f"  saebench leaderboard {p}" for p in found)
    raise SaebenchError(
        f"{len(found)} results folders under ./saebench-results/; pick one:\n{listing}"
    )


def _print_board(
    store: Any,
    suite_hash: str,
    suite_name: str | None,
    args: argparse.Namespace,
    out: str | None,
    summary: bool = False,
) -> None:
    """Render a leaderboard. ``summary`` (after ``run``, when no view option was given) shows the
    evaluators' headline metrics on the in-distribution splits, one row per SAE."""
    from saebench_vision.cache import atomic_write_text
    from saebench_vision.leaderboard import render

    summary = summary and not (args.layout or args.metric or args.split or args.all_metrics)
    frame = store.records_frame(suite_hash)
    done, total = store.progress(suite_hash)
    title = f"{suite_name or 'suite'} ({suite_hash}): {done}/{total} cells"
    text = render(
        frame,
        fmt=args.format,
        layout="wide" if summary else (args.layout or "long"),
        metrics=args.metric or (),
        splits=args.split or (),
        title=title + (", headline metrics on the eval splits" if summary else ""),
        versions=store.versions_for(suite_hash),
        headline_only=not args.all_metrics,
        roles=("eval",) if summary and "eval" in set(frame.get("role", [])) else (),
    )
    if out:
        atomic_write_text(Path(out), text)
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if summary:
        print(
            f"every split and metric: saebench leaderboard {store.output} --all-metrics "
            "[--layout wide] [--metric GLOB] [--split NAME] [--format md|csv|latex|html]",
            file=sys.stderr,
        )


def build_parser() -> argparse.ArgumentParser:
    from saebench_vision.leaderboard import FORMATS, LAYOUTS

    parser = argparse.ArgumentParser(
        prog="saebench",
        description="Train and evaluate sparse autoencoders on vision models; suites in YAML, results as leaderboards.",
    )
    parser.add_argument("--version", action="version", version=f"saebench-vision {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def board_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format", choices=FORMATS, default="md", help="table format (default: md)")
        p.add_argument(
            "--layout",
            choices=LAYOUTS,
            default=None,
            help="long (default for leaderboard): one row per SAE and split; wide: one column per metric and split",
        )
        p.add_argument(
            "--metric",
            action="append",
            help="only metrics matching this glob (metric or evaluator/metric); repeatable",
        )
        p.add_argument("--split", action="append", help="only this split; repeatable")
        p.add_argument(
            "--all-metrics",
            action="store_true",
            help="every metric, not only the evaluators' headline ones",
        )

    p = sub.add_parser("run", help="run a suite (resumable) and print its leaderboard")
    p.add_argument("suite", help="suite YAML file, e.g. suites/quickstart.yaml")
    p.add_argument("--output", help="results folder (overrides the suite's `output`)")
    p.add_argument(
        "--cache-dir",
        help="activation cache folder (overrides the suite and $SAEBENCH_VISION_CACHE)",
    )
    p.add_argument(
        "--threads",
        help="CPU threads: an integer, auto (default: the cores minus the load on them, idle "
        "threads sleeping) or torch (torch's own defaults); also $SAEBENCH_VISION_THREADS",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress output (otherwise a bar on a terminal, and a line per 10%% or per minute with rate and ETA when stderr is a file)",
    )
    board_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "validate",
        help="check a suite without running it: names, options, types, devices and layer names",
    )
    p.add_argument("suite")
    p.add_argument(
        "--light",
        action="store_true",
        help="only names, options and types: import no component implementation (no torch)",
    )
    p.add_argument(
        "--datasets",
        action="store_true",
        help="also open every split (reads folders; may fetch installable data)",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plugins", help="list plugins, their versions, hooks and components")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--verbose", "-v", action="store_true", help="also list every component's options"
    )
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("layers", help="list a model adapter's layer names")
    p.add_argument("model", help="model plugin name, e.g. efficientnet-lite")
    p.add_argument("--arg", action="append", metavar="KEY=VALUE", help="adapter option; repeatable")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("leaderboard", help="render a leaderboard from a results folder or a suite")
    p.add_argument(
        "target",
        nargs="?",
        default=None,
        help="suite YAML file or results folder (default: the results folder here, or the only "
        "one under ./saebench-results/; several are listed)",
    )
    p.add_argument(
        "--results", help="results folder when TARGET is a suite (overrides its `output`)"
    )
    p.add_argument(
        "--suite-hash", help="which suite of the results folder (default: the latest run's)"
    )
    p.add_argument("--out", "-o", help="write to this file instead of standard output")
    board_options(p)
    p.set_defaults(func=cmd_leaderboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except SaebenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(
            "interrupted; finished cells are saved, run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
