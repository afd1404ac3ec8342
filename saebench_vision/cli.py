"""The ``saebench`` command: run, validate, plugins, leaderboard, layers, cache.

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
    from saebench_vision.runner import Runner

    manager = _manager()
    suite = _load(args.suite, manager, args.output)
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else None
    runner = Runner(
        suite,
        manager,
        cache_dir=cache_dir,
        progress=not args.no_progress and sys.stderr.isatty(),
        argv=sys.argv,
    )
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
        checked += ", devices, layer names" + (", datasets" if args.datasets else "")
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
                types = field_types(cfg)
                for name, f in config_fields(cfg).items():
                    print(
                        f"  {name}: {describe_type(types[name])} = {_default_text(f)}  "
                        f"{f.metadata.get('help', '')}"
                    )
    return 0


def _default_text(f: Any) -> str:
    """A Config field's default as shown by ``plugins --verbose`` (factories are called)."""
    import dataclasses

    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return "(required)"


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

    target = Path(args.target)
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


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def cmd_cache(args: argparse.Namespace) -> int:
    from saebench_vision.cache import ActivationCache

    cache = ActivationCache(Path(args.cache_dir).expanduser() if args.cache_dir else None)
    if args.cache_command == "ls":
        manifests = cache.manifests()
        if args.json:
            print(json.dumps(manifests, indent=1, default=str))
            return 0
        from tabulate import tabulate

        rows = [
            [
                str(m.get("key", "?"))[:12],
                m.get("meta", {}).get("model", "?"),
                m.get("meta", {}).get("layer", "?"),
                m.get("meta", {}).get("tokens", "?"),
                m.get("meta", {}).get("split", "?"),
                m.get("n", "?"),
                m.get("d", "?"),
                _size(m["bytes"]),
            ]
            for m in manifests
        ]
        headers = ["key", "model", "layer", "tokens", "split", "rows", "width", "size"]
        print(tabulate(rows, headers=headers, tablefmt="simple"))
        total = sum(m["bytes"] for m in manifests)
        print(f"{len(manifests)} entries, {_size(total)} in {cache.root}")
        return 0
    if args.cache_command == "verify":
        keys = [m["key"] for m in cache.manifests()]
        if args.key:
            keys = [k for k in keys if any(k.startswith(prefix) for prefix in args.key)]
        bad = 0
        for key in keys:
            problem = cache.verify_entry(key, remove=args.remove)
            if problem:
                bad += 1
                action = "removed" if args.remove else "run with --remove to delete it"
                print(f"DAMAGED {key[:12]}: {problem} ({action})")
        print(
            f"{len(keys) - bad} of {len(keys)} entries sound (SHA-256 of every file) in {cache.root}"
        )
        return 1 if bad else 0
    swept = cache.gc(dry_run=args.dry_run)
    for path, size, why in swept:
        print(f"{'would remove' if args.dry_run else 'removed'} {path} ({_size(size)}): {why}")
    freed = sum(size for _, size, _ in swept)
    print(
        f"{len(swept)} item(s), {_size(freed)} {'to free' if args.dry_run else 'freed'} in {cache.root}"
    )
    return 0


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
    if getattr(args, "evaluator", None):
        present = sorted(set(frame["evaluator"])) if len(frame) else []
        unknown = [e for e in args.evaluator if e not in present]
        if unknown:
            raise SaebenchError(
                f"--evaluator {unknown[0]}: no results of that evaluator in {store.path} "
                f"(evaluators with results: {', '.join(present) or 'none'})"
            )
        frame = frame[frame["evaluator"].isin(args.evaluator)]
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
            "--evaluator",
            action="append",
            help="only this evaluator's results, e.g. ood-accuracy; repeatable",
        )
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
        "--no-progress",
        action="store_true",
        help="no progress bars (they are off when stderr is not a terminal)",
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
        "target", nargs="?", default=".", help="suite YAML file or results folder (default: .)"
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

    p = sub.add_parser("cache", help="list, verify or clean the activation cache")
    cache_sub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)

    def cache_dir_option(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--cache-dir",
            help="activation cache folder (default: $SAEBENCH_VISION_CACHE or ~/.cache/saebench_vision)",
        )

    q = cache_sub.add_parser("ls", help="list the entries: model, layer, tokens, split, rows, size")
    cache_dir_option(q)
    q.add_argument("--json", action="store_true", help="the manifests, machine-readable")
    q.set_defaults(func=cmd_cache)
    q = cache_sub.add_parser(
        "verify", help="rehash every file (SHA-256) and report damaged entries (exit status 1)"
    )
    cache_dir_option(q)
    q.add_argument("key", nargs="*", help="only entries whose key starts with one of these")
    q.add_argument("--remove", action="store_true", help="delete damaged entries (rebuilt on use)")
    q.set_defaults(func=cmd_cache)
    q = cache_sub.add_parser(
        "gc",
        help="remove temporary folders of killed runs (owner process gone) and broken entries",
    )
    cache_dir_option(q)
    q.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    q.set_defaults(func=cmd_cache)
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
