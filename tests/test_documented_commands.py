"""Every `saebench ...` command quoted in the README, docs and suite comments exists as written.

Each quoted command is parsed with the CLI's own argparse parser (so a doc cannot quote a flag or
a subcommand that does not exist); usage synopses (``SUITE``, ``[--output DIR]``) are checked
flag by flag against the subcommand; suite files a command names must exist; and the cheap
commands (``plugins``, ``validate --light``, ``cache ls``, ``--help``) are run.
"""

from __future__ import annotations

import argparse
import re
import shlex

import pytest
from conftest import REPO

from saebench_vision.cli import build_parser, main
from saebench_vision.errors import SaebenchError

PLACEHOLDER = re.compile(r"\b[A-Z][A-Z_]+\b|\[|\]|\\\||\|")


def documented_commands() -> list[tuple[str, str]]:
    """``(where, command)`` for every quoted ``saebench`` command."""
    found: list[tuple[str, str]] = []
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for path in docs:
        text = path.read_text()
        spans = re.findall(r"`([^`]*\bsaebench [^`]*)`", text)  # inline, may wrap lines
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            spans += block.splitlines()
        for span in spans:
            span = span.strip()
            if not (span.startswith("saebench ") or "&& saebench " in span):
                continue  # prose that names the program, not a command
            for part in re.split(r"&&|;", span):
                part = " ".join(part.split()).split(" #")[0].strip()
                at = part.find("saebench ")
                if at >= 0 and not part[:at].strip().endswith(("pip install", "import")):
                    found.append((path.name, part[at:]))
    for path in sorted((REPO / "suites").rglob("*.yaml")):
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("#") and "saebench " in line:
                spans = re.findall(r"`(saebench [^`]*)`", line) or [
                    line.split("saebench ", 1)[1].split("#")[0]
                ]
                for span in spans:
                    span = span if span.startswith("saebench ") else "saebench " + span
                    found.append((str(path.relative_to(REPO)), " ".join(span.split())))
    # prose such as "the saebench command" is not a command
    return [(w, c) for w, c in found if c.split()[1].startswith("-") or c.split()[1].islower()]


COMMANDS = documented_commands()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def test_the_docs_quote_commands():
    names = {c.split()[1] for _, c in COMMANDS}
    assert {"run", "validate", "plugins", "layers", "leaderboard", "cache"} <= names
    assert any("--evaluator" in c for _, c in COMMANDS)  # the suites' comments use it


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[c for _, c in COMMANDS])
def test_documented_command_parses(where, command):
    words = command.split()[1:]
    parser = build_parser()
    if PLACEHOLDER.search(" ".join(words)) and not words[0].startswith("-"):
        # A synopsis: the subcommand exists and has every flag it lists.
        sub = _subparsers(parser)
        assert words[0] in sub, f"{where}: `{command}`: no subcommand {words[0]!r}"
        targets = [sub[words[0]]]
        nested = _subparsers(targets[0])
        if nested:  # `cache ls|verify|gc`: every alternative exists
            actions = re.split(r"\\?\|", words[1])
            assert set(actions) <= set(nested), f"{where}: `{command}`: unknown {actions}"
            targets = [nested[a] for a in actions]
        flags = set(re.findall(r"--[a-z][a-z0-9-]*", command))
        for target in targets:
            missing = flags - _flags(target)
            assert not missing, f"{where}: `{command}` quotes {sorted(missing)}, which do not exist"
        return
    try:
        args = parser.parse_args(shlex.split(command)[1:])
    except SystemExit as exc:
        if exc.code == 0 and "--help" in words:
            return
        positional = [w for w in words[1:] if not w.startswith("-")]
        if words[0] in _subparsers(parser) and not positional:
            # A mention of a subcommand in prose ("`saebench run` ends with a summary"): its
            # flags must still exist.
            missing = {w for w in words[1:]} - _flags(_subparsers(parser)[words[0]])
            assert not missing, f"{where}: `{command}` quotes {sorted(missing)}"
            return
        pytest.fail(f"{where}: `{command}` does not parse (exit {exc.code})")
    suite = getattr(args, "suite", None) or getattr(args, "target", None)
    if suite and suite.endswith(".yaml"):
        assert (REPO / suite).is_file(), f"{where}: `{command}` names a missing file {suite}"


def _cheap(command: str) -> bool:
    words = command.split()[1:]
    if PLACEHOLDER.search(" ".join(words)):
        return False
    return words[:1] in (["plugins"], ["--help"]) or words[:2] in (
        ["validate", "--light"],
        ["cache", "ls"],
    )


CHEAP = sorted({c for _, c in COMMANDS if _cheap(c)})


def test_some_documented_commands_are_cheap_enough_to_run():
    assert any(c.startswith("saebench plugins") for c in CHEAP)
    assert any(c.startswith("saebench validate --light") for c in CHEAP)


@pytest.mark.parametrize("command", CHEAP)
def test_cheap_documented_command_runs(command, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(REPO)
    words = shlex.split(command)[1:]
    if words[:1] == ["validate"] and not any(w.endswith(".yaml") for w in words):
        words.append("suites/quickstart.yaml")
    if words[:2] == ["cache", "ls"]:
        words += ["--cache-dir", str(tmp_path)]
    try:
        code = main(words)
    except SystemExit as exc:  # --help
        code = int(exc.code or 0)
    out = capsys.readouterr()
    assert code == 0, f"`{command}` exited {code}: {out.err[-500:]}"


def test_every_environment_variable_the_code_reads_is_in_the_readme_table():
    code = [
        *sorted((REPO / "saebench_vision").glob("*.py")),
        *sorted((REPO / "plugins").rglob("*.py")),
    ]
    used = {v for path in code for v in re.findall(r"SAEBENCH_VISION_[A-Z_]+", path.read_text())}
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(SAEBENCH_VISION_[A-Z_]+)", table, flags=re.M))
    assert "SAEBENCH_VISION_DEBUG" in used and used <= listed, sorted(used - listed)


def test_the_readme_says_how_to_see_a_traceback_and_where_the_store_snapshot_is(tmp_path):
    from saebench_vision.results import ResultsStore

    readme = (REPO / "README.md").read_text()
    errors = readme.split("answers in one line", 1)[1].split("\n## ", 1)[0]
    assert "--debug" in errors and "SAEBENCH_VISION_DEBUG=1" in errors
    assert "results.sqlite.bak" in errors
    # What it describes: a run ends by writing the snapshot under that name, and the store's
    # "damaged" message points to it.
    store = ResultsStore(tmp_path)
    run = store.start_run(
        suite_name="s", suite_path="s.yaml", suite_hash="h", suite_json={}, versions={}, argv=[]
    )
    store.finish_run(run, "finished")
    store.close()
    assert (tmp_path / "results.sqlite.bak").is_file()
    (tmp_path / "results.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(SaebenchError, match=r"cp \S*results\.sqlite\.bak \S*results\.sqlite"):
        ResultsStore(tmp_path)
