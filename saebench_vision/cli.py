"""The ``saebench`` command: run, validate, plugins, leaderboard, layers, cache, plot, report,
export.

Start-up stays light: nothing here imports torch, transformers, diffusers or open_clip; ``run``
imports them only when a cell actually has to be computed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from saebench_vision import __version__
from saebench_vision.errors import SaebenchError

EXIT_ERROR = 2
EXIT_BUG = 1
"""Exit codes: 2 for a problem with the input (suite, files, plugins), 1 for an unexpected error."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (the full usage is one ``--help`` away)."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _out_file(value: str | None) -> Path | None:
    """``--out`` as a file path: an existing folder there is an error, not a traceback."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        raise SaebenchError(f"--out {value}: is a folder; give a file name inside it")
    return path


def _out_folder(value: str | None) -> Path | None:
    """``--out`` as a folder path: an existing file there is an error."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise SaebenchError(f"--out {value}: is a file; give a folder for the figures")
    return path


def _manager() -> Any:
    from saebench_vision.plugins import get_plugin_manager

    return get_plugin_manager()


def _load(path: str, manager: Any, output: str | None = None) -> Any:
    import yaml

    from saebench_vision.suite import load_suite

    try:
        return load_suite(path, manager.registry(), output=output)
    except yaml.YAMLError as exc:  # what the suite reader lets through (e.g. a NUL byte)
        raise SaebenchError(f"{path}: not a readable YAML suite ({_one_line(exc)})") from exc


def cmd_run(args: argparse.Namespace) -> int:
    from saebench_vision.threads import configure_threads

    # Before torch loads: OpenMP reads its thread count and wait policy once.
    threads = configure_threads(args.threads)
    from saebench_vision.runner import Runner

    manager = _manager()
    suite = _load(args.suite, manager, args.output)
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else None
    if args.address and (args.executor or suite.executor.get("name", "local")) != "ray":
        raise SaebenchError(
            f"--address {args.address}: only the ray executor joins a cluster; add --executor ray"
        )
    runner = Runner(
        suite,
        manager,
        cache_dir=cache_dir,
        # A bar on a terminal; plain lines (per 10% or per minute) in a log file.
        progress=False if args.no_progress else (True if sys.stderr.isatty() else "log"),
        argv=sys.argv,
        executor=args.executor,
        address=args.address,
    )
    others = runner.store.other_suites(suite.name) if runner.has_store() else []
    if others:
        print(
            f"note: {suite.output} also holds the results of suite "
            f"{', '.join(f'`{o}`' for o in others)}; cells they share are reused, and this "
            f"suite's tables show only its own cells (give it its own `output:` to keep them apart)",
            file=sys.stderr,
        )
    print(threads.describe(), file=sys.stderr)
    summary = runner.run()
    print(
        f"{summary.computed_cells} of {summary.total_cells} cells computed in {summary.seconds:.1f} s "
        + (f"and {summary.taken_cells} by a concurrent run " if summary.taken_cells else "")
        + f"(run {summary.run_id})",
        file=sys.stderr,
    )
    _print_board(runner.store, suite.hash, suite.name, args, out=None, summary=True)
    if summary.status != "finished":
        for step, message in summary.failures:
            print(f"failed: {step}: {message}", file=sys.stderr)
        shown = summary.unfinished[:20]
        print(
            f"run {summary.run_id} failed: {len(summary.unfinished)} cell(s) unfinished"
            + "".join(
                f"\n  {c.model}/{c.layer}/{c.sae_label}/{c.evaluator}/seed {c.seed}" for c in shown
            )
            + ("\n  ..." if len(summary.unfinished) > len(shown) else "")
            + "\nrun the same command again to resume",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from saebench_vision.runner import plan_suite, preflight

    manager = _manager()
    suite = _load(args.suite, manager)
    checked = "names, options and types"
    if not args.light:
        notes: list[str] = []
        preflight(suite, manager, datasets=args.datasets, notes=notes)
        checked += ", devices, layer names, input and token kinds, training memory" + (
            ", datasets" if args.datasets else ""
        )
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
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
        for kind in ("model", "sae", "dataset", "evaluator", "labeller"):
            for entry in registry.entries(kind):
                print(f"\n{kind} `{entry.name}` ({entry.plugin}): {entry.ref.target}")
                cfg = entry.config_class()
                declared = _declared_kinds(kind, cfg)
                if declared:
                    print(f"  ({declared})")
                types = field_types(cfg)
                for name, f in config_fields(cfg).items():
                    print(
                        f"  {name}: {describe_type(types[name])} = {_default_text(f)}  "
                        f"{f.metadata.get('help', '')}"
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


def _default_text(f: Any) -> str:
    """A Config field's default as shown by ``plugins --verbose`` (factories are called)."""

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
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise SaebenchError(
                f"--arg {item!r}: the value is not valid YAML ({_one_line(exc)}); quote it"
            ) from exc
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
    _print_board(store, suite_hash, suite_name, args, out=_out_file(args.out))
    return 0


def find_results_folder(here: Path, command: str = "leaderboard") -> Path:
    """The results folder ``saebench leaderboard`` (and plot, report, export) reads when given
    none: ``here`` if it holds a results database, else the only ``saebench-results/*/`` that
    does; several are an error that lists them."""
    from saebench_vision.results import DB_NAME

    if (here / DB_NAME).exists():
        return here
    found = sorted(p.parent for p in (here / "saebench-results").glob(f"*/{DB_NAME}"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise SaebenchError(
            f"no results database in {here.resolve()} or under ./saebench-results/; pass a suite "
            f"file or its output folder, e.g. `saebench {command} saebench-results/quickstart`"
        )
    listing = "\n".join(f"  saebench {command} {p}" for p in found)
    raise SaebenchError(
        f"{len(found)} results folders under ./saebench-results/; pick one:\n{listing}"
    )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def cmd_cache(args: argparse.Namespace) -> int:
    from saebench_vision.cache import ActivationCache

    root = Path(args.cache_dir).expanduser() if args.cache_dir else None
    if root is not None and not root.is_dir():
        raise SaebenchError(
            f"--cache-dir {root}: no activation cache there (not a folder); pass the folder a "
            "suite's `cache_dir:` or `saebench run --cache-dir` used"
        )
    cache = ActivationCache(root)
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
    out: Path | None,
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
        atomic_write_text(out, text)
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if summary:
        print(
            f"every split and metric: saebench leaderboard {store.output} --all-metrics "
            "[--layout wide] [--metric GLOB] [--split NAME] [--format md|csv|latex|html]",
            file=sys.stderr,
        )


# -- figures, report, export ------------------------------------------------------------------


def _results(args: argparse.Namespace) -> Any:
    from saebench_vision.resultset import open_results

    manager = _manager()
    target = args.target
    if target is None:
        target = str(find_results_folder(Path("."), args.command))
    return manager, open_results(
        target, results=args.results, suite_hash=args.suite_hash, manager=manager
    )


def _figure_options(args: argparse.Namespace, results: Any) -> Any:
    from saebench_vision.figures import FigureOptions
    from saebench_vision.sparsity import (
        DEFAULT_FRONT_BY,
        SparsityError,
        check_front_by,
        parse_l0_list,
    )

    at_l0 = tuple(parse_l0_list(args.at_l0)) if getattr(args, "at_l0", None) else ()
    budget = None
    if getattr(args, "l0_budget", None):
        (budget,) = parse_l0_list(args.l0_budget, "--l0-budget", single=True)
    elif at_l0:
        budget = max(at_l0)
    front_by = (
        tuple(p.strip() for p in args.front_by.split(",") if p.strip())
        if getattr(args, "front_by", None)
        else DEFAULT_FRONT_BY
    )
    if "plugin" not in front_by:
        raise SparsityError(
            f"--front-by {args.front_by}: must include `plugin` (e.g. plugin,expansion)"
        )
    if getattr(args, "front_by", None) and len(results.frame):
        check_front_by(front_by, results.frame["sae_config"])
    return FigureOptions(at_l0=at_l0, l0_budget=budget, front_by=front_by, dpi=args.dpi)


def _stats_options(args: argparse.Namespace) -> Any:
    from saebench_vision.summary import StatsOptions

    if not 0 < args.confidence < 1:
        raise SaebenchError(
            f"--confidence {args.confidence}: give a level between 0 and 1, e.g. 0.95"
        )
    if args.resamples < 1:
        raise SaebenchError(f"--resamples {args.resamples}: give at least 1 (default 1000)")
    return StatsOptions(
        resamples=args.resamples,
        level=args.confidence,
        seed=args.bootstrap_seed,
        max_items=args.bootstrap_max_items or None,
    )


def cmd_plot(args: argparse.Namespace) -> int:
    from saebench_vision.figures import draw_all, figure_entries

    chosen = _out_folder(args.out)
    manager, results = _results(args)
    if args.list:
        for name, entry in figure_entries(manager).items():
            print(f"{name}\t{entry.plugin}\t{entry.target}")
        return 0
    out = chosen or results.output / "figures"
    outcomes = draw_all(
        manager,
        results,
        names=args.figure or (),
        options=_figure_options(args, results),
        out_dir=out,
    )
    for o in outcomes:
        if o.error:
            print(f"error: {o.error}", file=sys.stderr)
        elif o.missing:
            print(f"skipped {o.missing}", file=sys.stderr)
        else:
            print(" ".join(str(f) for f in o.files))
    if not args.figure:
        from saebench_vision.figures import write_tables

        tables = write_tables(results, out)
        if tables:
            print(" ".join(str(t) for t in tables))
    return EXIT_ERROR if any(o.error for o in outcomes) else 0


def cmd_report(args: argparse.Namespace) -> int:
    import time

    from saebench_vision.report import ReportOptions, build_report, write_report

    started = time.perf_counter()
    chosen = _out_file(args.out)
    manager, results = _results(args)
    compare = None
    if args.compare:
        compare = []
        for item in args.compare:
            a, sep, b = item.partition(" vs ")
            if not sep:
                raise SaebenchError(
                    f"--compare {item!r}: write 'ROW vs ROW', e.g. --compare 'topk[expansion=2,k=32] vs baseline'"
                )
            compare.append((a.strip(), b.strip()))
    options = ReportOptions(
        stats=_stats_options(args),
        figures=_figure_options(args, results),
        figure_names=tuple(args.figure or ()),
        compare=tuple(compare) if compare is not None else None,
    )
    text = build_report(manager, results, options)
    out = chosen or results.output / "report.html"
    write_report(out, text)
    print(
        f"wrote {out} ({len(text) / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from saebench_vision.export import export
    from saebench_vision.sparsity import matched_rows

    chosen = _out_file(args.out)
    _, results = _results(args)
    fo = _figure_options(args, results)
    matched = None
    if fo.at_l0 or fo.l0_budget is not None:
        matched = matched_rows(
            results.frame, at_l0=fo.at_l0, budget=fo.l0_budget, front_by=fo.front_by
        )
    text = export(results, args.format, chosen, _stats_options(args), matched)
    if text is None:
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _add_report_commands(sub: Any) -> None:
    def source(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "target",
            nargs="?",
            default=None,
            help="suite YAML file or results folder (default: the results folder here, or the "
            "only one under ./saebench-results/; several are listed)",
        )
        p.add_argument(
            "--results", help="results folder when TARGET is a suite (overrides its `output`)"
        )
        p.add_argument(
            "--suite-hash", help="which suite of the results folder (default: the latest run's)"
        )

    def sparsity(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--at-l0",
            metavar="L0,L0,...",
            help="read every front at these L0 values, e.g. 16,32,64 (piecewise linear in log L0, never extrapolated)",
        )
        p.add_argument(
            "--l0-budget",
            metavar="L0",
            help="also the best SAE of each front with L0 at most this (default: the largest --at-l0)",
        )
        p.add_argument(
            "--front-by",
            metavar="FIELDS",
            help="what makes a front: plugin and these SAE config fields (default: plugin,expansion)",
        )

    def statistics(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--resamples", type=int, default=1000, help="bootstrap resamples (default: 1000)"
        )
        p.add_argument(
            "--bootstrap-seed", type=int, default=0, help="seed of the bootstrap (default: 0)"
        )
        p.add_argument(
            "--confidence", type=float, default=0.95, help="interval level (default: 0.95)"
        )
        p.add_argument(
            "--bootstrap-max-items",
            type=int,
            default=100_000,
            help="continuous values over more items use the normal limit of the bootstrap "
            "(0: always resample; default: 100000)",
        )

    p = sub.add_parser(
        "plot",
        help="draw the figures of a suite's results as PNG and SVG (and each evaluator's table)",
    )
    source(p)
    p.add_argument(
        "--figure",
        action="append",
        metavar="NAME",
        help="only this figure; repeatable (see --list)",
    )
    p.add_argument("--out", help="folder for the files (default: RESULTS/figures)")
    p.add_argument("--list", action="store_true", help="list the registered figures and exit")
    p.add_argument("--dpi", type=int, default=110, help="PNG resolution (default: 110)")
    sparsity(p)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser(
        "report", help="write a one-file HTML report: tables, figures, statistics, provenance"
    )
    source(p)
    p.add_argument("--out", "-o", help="the HTML file (default: RESULTS/report.html)")
    p.add_argument("--figure", action="append", metavar="NAME", help="only this figure; repeatable")
    p.add_argument(
        "--compare",
        action="append",
        metavar="'A vs B'",
        help="paired comparison of two rows (SAE labels or baseline); repeatable (default: every SAE vs baseline)",
    )
    p.add_argument("--dpi", type=int, default=90, help="figure resolution (default: 90)")
    sparsity(p)
    statistics(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="export results in a versioned schema (json, csv, parquet)")
    source(p)
    p.add_argument(
        "--format", choices=("json", "csv", "parquet"), default="json", help="default: json"
    )
    p.add_argument(
        "--out", "-o", help="write to this file (default: standard output; required for parquet)"
    )
    p.add_argument("--dpi", type=int, default=90, help=argparse.SUPPRESS)
    sparsity(p)
    statistics(p)
    p.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    from saebench_vision.leaderboard import FORMATS, LAYOUTS

    parser = _Parser(
        prog="saebench",
        description="Train and evaluate sparse autoencoders on vision models; suites in YAML, results as leaderboards.",
    )
    parser.add_argument("--version", action="version", version=f"saebench-vision {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of any error (also SAEBENCH_VISION_DEBUG=1); for developers",
    )
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
        "--threads",
        help="CPU threads: an integer, auto (default: the cores minus the load on them, idle "
        "threads sleeping) or torch (torch's own defaults); also $SAEBENCH_VISION_THREADS",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress output (otherwise a bar on a terminal, and a line per 10%% or per minute with rate and ETA when stderr is a file)",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default=None,
        help="where steps run: local (this process, the default) or ray (a Ray cluster); "
        "overrides the suite's `executor:`",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto, host:port or ray://host:10001 (default: start a local one)",
    )
    board_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "validate",
        help="check a suite without running it: names, options, types, devices, layer names and training memory",
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
    _add_report_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    debug = bool(getattr(args, "debug", False)) or _debug_env()
    try:
        return int(args.func(args) or 0)
    except SaebenchError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except RecursionError as exc:
        if debug:
            raise
        print(f"error: input nested too deeply to process ({exc})", file=sys.stderr)
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
    except MemoryError:
        if debug:
            raise
        print(
            "error: out of memory; use smaller batches, fewer latents or a smaller image size",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - a bug or a plugin's failure: one line, not a traceback
        if debug:
            raise
        where = _origin(exc)
        print(
            f"error: {type(exc).__name__}: {_one_line(exc)}{where}; this is a bug (or a plugin's): "
            f"run again with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return EXIT_BUG


def _debug_env() -> bool:
    return os.environ.get("SAEBENCH_VISION_DEBUG", "").strip().lower() in {"1", "true", "yes"}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _origin(exc: BaseException) -> str:
    """`` (in module.function)`` of the innermost frame, so a plugin's bug names the plugin."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return ""
    module = last.tb_frame.f_globals.get("__name__", "?")
    return f" (in {module}.{last.tb_frame.f_code.co_name})"


if __name__ == "__main__":
    sys.exit(main())
