"""The results store: one SQLite database per output folder, every number with its provenance.

Tables: ``runs`` (one per ``saebench run``: suite hash, plugin versions, times, status),
``saes`` (trained checkpoints), ``cells`` (finished evaluation cells) with their ``records``,
``suite_cells`` (which cells make up a suite, in suite order, for stable tables) and ``claims``
(the SAEs and cells a live run is computing, so that concurrent runs share work). A cell's
records and its "finished" mark are written in one transaction, so a killed run never leaves a
half-recorded cell; the next run recomputes exactly the cells that are missing.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saebench_vision.errors import ResultsError

DB_NAME = "results.sqlite"
SCHEMA_VERSION = 1
HEARTBEAT_SECONDS = 5.0
"""How often a run refreshes the heartbeat of its claims."""
CLAIM_STALE_SECONDS = 60.0
"""A claim of a run on another host whose heartbeat is older than this is taken over (12 missed
beats: a busy shared filesystem may delay a few; a dead node's work waits at most a minute).
Claims of this host are judged by whether their process is alive instead. Override with
``SAEBENCH_VISION_CLAIM_STALE_SECONDS``."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, suite_name TEXT NOT NULL, suite_path TEXT NOT NULL,
    suite_hash TEXT NOT NULL, suite_json TEXT NOT NULL, versions_json TEXT NOT NULL,
    host TEXT NOT NULL, argv TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL,
    status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS saes (
    sae_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, model TEXT NOT NULL, layer TEXT NOT NULL,
    label TEXT NOT NULL, plugin TEXT NOT NULL, config_json TEXT NOT NULL, seed INTEGER NOT NULL,
    path TEXT NOT NULL, stats_json TEXT NOT NULL, created_at REAL NOT NULL,
    weights_sha256 TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, model TEXT NOT NULL, layer TEXT NOT NULL,
    tokens TEXT NOT NULL, sae_id TEXT NOT NULL, sae_label TEXT NOT NULL, sae_plugin TEXT NOT NULL,
    sae_config_json TEXT NOT NULL, evaluator TEXT NOT NULL, evaluator_version TEXT NOT NULL,
    seed INTEGER NOT NULL, seconds REAL NOT NULL, finished_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id), metric TEXT NOT NULL, split TEXT NOT NULL,
    value REAL, stderr REAL, higher_is_better INTEGER, n INTEGER, extra_json TEXT NOT NULL,
    headline INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS records_cell ON records(cell_id);
CREATE TABLE IF NOT EXISTS suite_cells (
    suite_hash TEXT NOT NULL, cell_id TEXT NOT NULL, position INTEGER NOT NULL,
    model TEXT NOT NULL, layer TEXT NOT NULL, sae_label TEXT NOT NULL, evaluator TEXT NOT NULL,
    seed INTEGER NOT NULL, PRIMARY KEY (suite_hash, cell_id));
CREATE TABLE IF NOT EXISTS failures (
    run_id TEXT NOT NULL, step TEXT NOT NULL, message TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY, run_id TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
    heartbeat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS suite_splits (
    suite_hash TEXT NOT NULL, split TEXT NOT NULL, role TEXT NOT NULL, position INTEGER NOT NULL,
    PRIMARY KEY (suite_hash, split));
"""


@dataclass(frozen=True)
class CellKey:
    """What identifies and describes one evaluation cell (an SAE or a baseline x evaluator x seed)."""

    cell_id: str
    model: str
    layer: str
    tokens: str
    sae_id: str
    sae_label: str
    sae_plugin: str
    sae_config: dict[str, Any]
    evaluator: str
    evaluator_version: str
    seed: int


class ResultsStore:
    """A SQLite database under a run's output folder. Safe for several processes (WAL, retries)."""

    def __init__(self, output: Path | str) -> None:
        self.output = Path(output)
        self.path = self.output / DB_NAME
        try:
            self.output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsError(
                f"{self.output}: cannot create the output folder ({exc.strerror}); choose another `output`"
            ) from exc
        self._check_file()
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            if self.path.stat().st_size > 0:
                problems = [row[0] for row in self.db.execute("PRAGMA quick_check").fetchall()]
                if problems != ["ok"]:
                    self.db.close()
                    raise ResultsError(self._damaged(problems[0]))
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            self._migrate()
            self.db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except sqlite3.DatabaseError as exc:
            raise ResultsError(self._damaged(str(exc))) from exc

    def _migrate(self) -> None:
        # Stores written before SAE checkpoints were hashed: their rows keep '' (unknown), and
        # their checkpoints are checked against what their own cfg.json records.
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(saes)")}
        if "weights_sha256" not in columns:
            self.db.execute("ALTER TABLE saes ADD COLUMN weights_sha256 TEXT NOT NULL DEFAULT ''")

    @property
    def backup_path(self) -> Path:
        return self.output / (DB_NAME + ".bak")

    def _check_file(self) -> None:
        """An existing empty database is damage, unless the folder holds nothing else yet."""
        if not self.path.exists() or self.path.stat().st_size > 0:
            return
        others = [
            p.name
            for p in self.output.iterdir()
            if not p.name.startswith(DB_NAME) or p.name == self.backup_path.name
        ]
        if others:
            raise ResultsError(self._damaged("the file is empty, but the folder holds results"))

    def _damaged(self, problem: str) -> str:
        restore = (
            f"restore the snapshot of the last finished run with "
            f"`cp {self.backup_path} {self.path}`"
            if self.backup_path.exists()
            else "move it aside to start afresh (everything will be recomputed)"
        )
        return f"{self.path}: the results database is damaged ({problem}); {restore}"

    def snapshot(self) -> None:
        """Write a consistent copy of the store beside it (SQLite's backup API), atomically."""
        tmp = self.backup_path.with_name(f".{self.backup_path.name}.{os.getpid()}.tmp")
        try:
            dest = sqlite3.connect(tmp)
            try:
                self.db.backup(dest)
            finally:
                dest.close()
            os.replace(tmp, self.backup_path)
        except (OSError, sqlite3.Error):
            tmp.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- runs -------------------------------------------------------------------------------
    def start_run(
        self,
        *,
        suite_name: str,
        suite_path: str,
        suite_hash: str,
        suite_json: dict[str, Any],
        versions: dict[str, str],
        argv: list[str],
    ) -> str:
        self.mark_interrupted()
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,NULL,'running')",
                (
                    run_id,
                    suite_name,
                    suite_path,
                    suite_hash,
                    json.dumps(suite_json, default=str),
                    json.dumps(versions),
                    f"{platform.node()} pid {os.getpid()}",
                    json.dumps(argv),
                    time.time(),
                ),
            )
        return run_id

    def finish_run(self, run_id: str, status: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET finished_at=?, status=? WHERE run_id=?",
                (time.time(), status, run_id),
            )
        self.snapshot()

    def mark_interrupted(self) -> list[str]:
        """Mark as ``interrupted`` this machine's ``running`` runs whose process is gone."""
        node = platform.node()
        gone = []
        for run_id, host in self.db.execute(
            "SELECT run_id, host FROM runs WHERE status='running'"
        ).fetchall():
            name, _, pid = str(host).rpartition(" pid ")
            if name == node and pid.isdigit() and not pid_alive(int(pid)):
                gone.append(run_id)
        if gone:
            with self.transaction() as db:
                db.executemany(
                    "UPDATE runs SET status='interrupted' WHERE run_id=? AND status='running'",
                    [(r,) for r in gone],
                )
        return gone

    # -- claims -----------------------------------------------------------------------------
    def claim(
        self,
        keys: Iterable[str],
        run_id: str,
        finished: Callable[[], bool],
        *,
        stale_after: float = CLAIM_STALE_SECONDS,
    ) -> tuple[str, str]:
        """Claim the work named by ``keys`` for ``run_id``, all or nothing, in one transaction.

        Returns ``("done", "")`` when ``finished()`` (asked inside the transaction) says another
        run already stored it, ``("theirs", run_id)`` while a live other run holds one of the
        keys, else ``("mine", "")``. A claim's owner is dead when its run is no longer
        ``running``, when it is on this host and its process is gone, or when it is on another
        host and its heartbeat is older than ``stale_after`` seconds; such claims are taken over.
        """
        keys = list(keys)
        node, pid, now = platform.node(), os.getpid(), time.time()
        with self.transaction() as db:
            if finished():
                return "done", ""
            for key in keys:
                row = db.execute(
                    """SELECT c.run_id, c.host, c.pid, c.heartbeat, r.status FROM claims c
                       LEFT JOIN runs r ON r.run_id = c.run_id WHERE c.key=?""",
                    (key,),
                ).fetchone()
                if row is None or row[0] == run_id or row[4] != "running":
                    continue
                owner, host, owner_pid, beat = row[0], row[1], int(row[2]), float(row[3])
                alive = pid_alive(owner_pid) if host == node else now - beat < stale_after
                if alive:
                    return "theirs", str(owner)
            db.executemany(
                "INSERT OR REPLACE INTO claims VALUES (?,?,?,?,?)",
                [(key, run_id, node, pid, now) for key in keys],
            )
        return "mine", ""

    def release(self, keys: Iterable[str], run_id: str) -> None:
        """Drop ``run_id``'s claims on ``keys`` (after their results are stored, or they failed)."""
        with self.transaction() as db:
            db.executemany(
                "DELETE FROM claims WHERE key=? AND run_id=?", [(k, run_id) for k in keys]
            )

    def release_all(self, run_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM claims WHERE run_id=?", (run_id,))

    def other_suites(self, suite_name: str) -> list[str]:
        """Names of the other suites whose runs this store holds."""
        rows = self.db.execute(
            "SELECT DISTINCT suite_name FROM runs WHERE suite_name != ? ORDER BY suite_name",
            (suite_name,),
        ).fetchall()
        return [r[0] for r in rows]

    def runs(self) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT run_id, suite_name, suite_hash, started_at, finished_at, status, versions_json FROM runs ORDER BY started_at"
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def latest_suite_hash(self, suite_name: str | None = None) -> str:
        query = "SELECT suite_hash FROM runs"
        params: tuple[Any, ...] = ()
        if suite_name:
            query += " WHERE suite_name=?"
            params = (suite_name,)
        row = self.db.execute(query + " ORDER BY started_at DESC LIMIT 1", params).fetchone()
        if row is None:
            which = f" for suite `{suite_name}`" if suite_name else ""
            raise ResultsError(
                f"{self.path}: no runs recorded{which}; run `saebench run SUITE` first"
            )
        return str(row[0])

    def versions_for(self, suite_hash: str) -> dict[str, str]:
        """Versions of the software that computed the suite's cells (several values if runs differ)."""
        rows = self.db.execute(
            """SELECT DISTINCT r.versions_json FROM runs r
               JOIN cells c ON c.run_id = r.run_id
               JOIN suite_cells sc ON sc.cell_id = c.cell_id
               WHERE sc.suite_hash = ? ORDER BY r.started_at""",
            (suite_hash,),
        ).fetchall()
        merged: dict[str, list[str]] = {}
        for (text,) in rows:
            for name, version in json.loads(text).items():
                if version not in merged.setdefault(name, []):
                    merged[name].append(version)
        return {name: " / ".join(versions) for name, versions in merged.items()}

    def suite_name(self, suite_hash: str) -> str | None:
        row = self.db.execute(
            "SELECT suite_name FROM runs WHERE suite_hash=? ORDER BY started_at DESC LIMIT 1",
            (suite_hash,),
        ).fetchone()
        return str(row[0]) if row else None

    # -- suite layout -----------------------------------------------------------------------
    def register_suite(
        self, suite_hash: str, cells: list[CellKey], splits: list[tuple[str, str]]
    ) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM suite_cells WHERE suite_hash=?", (suite_hash,))
            db.executemany(
                "INSERT INTO suite_cells VALUES (?,?,?,?,?,?,?,?)",
                [
                    (suite_hash, c.cell_id, i, c.model, c.layer, c.sae_label, c.evaluator, c.seed)
                    for i, c in enumerate(cells)
                ],
            )
            db.execute("DELETE FROM suite_splits WHERE suite_hash=?", (suite_hash,))
            db.executemany(
                "INSERT INTO suite_splits VALUES (?,?,?,?)",
                [(suite_hash, s, r, i) for i, (s, r) in enumerate(splits)],
            )

    # -- SAEs -------------------------------------------------------------------------------
    def sae_path(self, sae_id: str) -> Path | None:
        row = self.db.execute("SELECT path FROM saes WHERE sae_id=?", (sae_id,)).fetchone()
        return self.output / row[0] if row else None

    def sae_sha256(self, sae_id: str) -> str | None:
        """The SHA-256 of an SAE's weights file as saved, or None if unknown."""
        row = self.db.execute(
            "SELECT weights_sha256 FROM saes WHERE sae_id=?", (sae_id,)
        ).fetchone()
        return str(row[0]) if row and row[0] else None

    def add_saes(self, rows: Iterable[dict[str, Any]]) -> None:
        with self.transaction() as db:
            for r in rows:
                db.execute(
                    "INSERT OR REPLACE INTO saes (sae_id, run_id, model, layer, label, plugin, "
                    "config_json, seed, path, stats_json, created_at, weights_sha256) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        r["sae_id"],
                        r["run_id"],
                        r["model"],
                        r["layer"],
                        r["label"],
                        r["plugin"],
                        json.dumps(r["config"], default=str),
                        r["seed"],
                        r["path"],
                        json.dumps(r["stats"]),
                        time.time(),
                        str(r.get("weights_sha256") or ""),
                    ),
                )

    def add_failure(self, run_id: str, step: str, message: str) -> None:
        """Record a step that failed (the run goes on with the steps that do not need it)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO failures VALUES (?,?,?,?)", (run_id, step, message, time.time())
            )

    def failures(self, run_id: str) -> list[tuple[str, str]]:
        rows = self.db.execute(
            "SELECT step, message FROM failures WHERE run_id=? ORDER BY at", (run_id,)
        ).fetchall()
        return [(str(a), str(b)) for a, b in rows]

    # -- cells ------------------------------------------------------------------------------
    def done_cells(self, cell_ids: Iterable[str]) -> set[str]:
        ids = list(cell_ids)
        done: set[str] = set()
        for lo in range(0, len(ids), 500):
            chunk = ids[lo : lo + 500]
            rows = self.db.execute(
                f"SELECT cell_id FROM cells WHERE cell_id IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            done.update(r[0] for r in rows)
        return done

    def add_cell(
        self,
        run_id: str,
        cell: CellKey,
        records: list[Any],
        seconds: float,
        headline: tuple[str, ...] = (),
    ) -> None:
        """Store a finished cell and its records atomically; ``headline`` metrics show by default.

        SQLite stores NaN as NULL and has no infinity literal in every client, so a non-finite
        value or stderr is stored as NULL with its text (``nan``, ``inf``, ``-inf``) under
        ``NONFINITE_KEY`` in ``extra_json``, read back by :meth:`records_frame`, and announced
        with a warning naming the cell.
        """
        rows = []
        for r in records:
            extra = dict(r.extra)
            odd = {
                name: _nonfinite_text(v)
                for name, v in (("value", r.value), ("stderr", r.stderr))
                if _nonfinite_text(v) is not None
            }
            if odd:
                extra[NONFINITE_KEY] = odd
                print(
                    f"warning: cell {cell.cell_id} ({cell.model} {cell.layer} {cell.sae_label} "
                    f"{cell.evaluator}): metric {r.metric}"
                    + (f" on split {r.split}" if r.split else "")
                    + " is "
                    + ", ".join(f"{k} {v}" for k, v in odd.items()),
                    file=sys.stderr,
                )
            rows.append(
                (
                    cell.cell_id,
                    r.metric,
                    r.split,
                    _finite(r.value),
                    _finite(r.stderr),
                    None if r.higher_is_better is None else int(bool(r.higher_is_better)),
                    r.n,
                    json.dumps(extra, default=str),
                    int(r.metric in headline if headline else True),
                )
            )
        with self.transaction() as db:
            db.execute("DELETE FROM records WHERE cell_id=?", (cell.cell_id,))
            db.execute(
                "INSERT OR REPLACE INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    cell.cell_id,
                    run_id,
                    cell.model,
                    cell.layer,
                    cell.tokens,
                    cell.sae_id,
                    cell.sae_label,
                    cell.sae_plugin,
                    json.dumps(cell.sae_config, default=str),
                    cell.evaluator,
                    cell.evaluator_version,
                    cell.seed,
                    seconds,
                    time.time(),
                ),
            )
            db.executemany("INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?)", rows)

    def records_frame(self, suite_hash: str) -> Any:
        """Long-form records of a suite's finished cells as a pandas DataFrame, in suite order."""
        import pandas as pd

        # A row (model, layer, SAE) sits where its first cell sits in the suite, whether or not
        # that cell has records, so tables keep one row order whatever metrics are selected.
        query = """
            WITH row_rank AS (
                SELECT model, layer, sae_label, MIN(position) AS row_position
                FROM suite_cells WHERE suite_hash = ? GROUP BY model, layer, sae_label)
            SELECT sc.position, rr.row_position, sc.model, sc.layer, sc.sae_label, sc.evaluator,
                   sc.seed, r.metric, r.split, r.value, r.stderr, r.higher_is_better, r.n,
                   r.headline, COALESCE(ss.position, 1000000) AS split_position, ss.role AS role,
                   r.rowid AS rid, r.extra_json AS extra_json
            FROM suite_cells sc
            JOIN records r ON r.cell_id = sc.cell_id
            JOIN row_rank rr ON rr.model = sc.model AND rr.layer = sc.layer
                            AND rr.sae_label = sc.sae_label
            LEFT JOIN suite_splits ss ON ss.suite_hash = sc.suite_hash AND ss.split = r.split
            WHERE sc.suite_hash = ?
            ORDER BY rr.row_position, split_position, sc.position, r.rowid
        """
        frame = pd.read_sql_query(query, self.db, params=(suite_hash, suite_hash))
        return restore_nonfinite(frame)

    def progress(self, suite_hash: str) -> tuple[int, int]:
        total = self.db.execute(
            "SELECT COUNT(*) FROM suite_cells WHERE suite_hash=?", (suite_hash,)
        ).fetchone()[0]
        done = self.db.execute(
            "SELECT COUNT(*) FROM suite_cells sc JOIN cells c ON c.cell_id = sc.cell_id WHERE sc.suite_hash=?",
            (suite_hash,),
        ).fetchone()[0]
        return int(done), int(total)


class ClaimHeartbeat:
    """A thread that refreshes a run's claims every ``interval`` seconds, on its own connection,
    so that runs on other hosts see the claims are alive however long one step takes."""

    def __init__(self, path: Path, run_id: str, interval: float = HEARTBEAT_SECONDS) -> None:
        import threading

        self.path, self.run_id, self.interval = path, run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="saebench-claims", daemon=True)

    def __enter__(self) -> ClaimHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            while not self._stop.wait(self.interval):
                try:
                    db.execute(
                        "UPDATE claims SET heartbeat=? WHERE run_id=?", (time.time(), self.run_id)
                    )
                except sqlite3.Error:
                    pass  # a busy store: the next beat tries again, well within stale_after
        finally:
            db.close()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


NONFINITE_KEY = "_saebench_nonfinite"
"""``extra_json`` key holding the text of a record's non-finite value or stderr."""


def _nonfinite_text(value: Any) -> str | None:
    if value is None:
        return None
    value = float(value)
    if value != value:
        return "nan"
    if abs(value) == float("inf"):
        return "inf" if value > 0 else "-inf"
    return None


def restore_nonfinite(frame: Any) -> Any:
    """``frame`` (with an ``extra_json`` column, dropped) with the non-finite values and stderrs
    that :meth:`ResultsStore.add_cell` stored as NULL put back (NaN, inf, -inf)."""
    if "extra_json" not in frame.columns:
        return frame
    frame = frame.astype({"value": "float64", "stderr": "float64"})
    marked = frame["extra_json"].str.contains(NONFINITE_KEY, regex=False, na=False)
    for index in frame.index[marked]:
        odd = json.loads(frame.at[index, "extra_json"]).get(NONFINITE_KEY, {})
        for column in ("value", "stderr"):
            if column in odd:
                frame.at[index, column] = float(odd[column])
    return frame.drop(columns=["extra_json"])


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def open_store(output: Path | str, *, must_exist: bool = False) -> ResultsStore:
    path = Path(output) / DB_NAME
    if must_exist and not path.exists():
        raise ResultsError(
            f"{path}: no results database here; pass the suite's output folder (see `output:` in the suite) or run the suite first"
        )
    return ResultsStore(output)
