"""One suite's results as the figures, the report and the export read them.

:class:`ResultSet` wraps ``ResultsStore.records_frame`` (records in suite order) and adds what
those need beyond a leaderboard: each record's cell id, ``extra`` (per-item files, figure data),
the SAE's plugin and config, the cell's run and time, the suite's runs and provenance, and the
cell's artifact folder. Loading it imports pandas and nothing of any model.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saebench_vision.errors import ResultsError
from saebench_vision.results import ResultsStore


@dataclass
class ResultSet:
    """Records of one suite (``frame``), with provenance and paths to the cells' artifacts."""

    store: ResultsStore
    suite_hash: str
    suite_name: str
    frame: Any

    @classmethod
    def load(cls, store: ResultsStore, suite_hash: str | None = None) -> ResultSet:
        suite_hash = suite_hash or store.latest_suite_hash()
        frame = store.records_frame(suite_hash)
        extra = _extras(store, suite_hash)
        if len(frame):
            frame = frame.merge(extra, on="rid", how="left")
        else:
            for col in extra.columns:
                if col not in frame.columns:
                    frame[col] = []
        return cls(store, suite_hash, store.suite_name(suite_hash) or "suite", frame)

    @property
    def output(self) -> Path:
        return self.store.output

    def artifact_dir(self, cell_id: str) -> Path:
        return self.output / "artifacts" / cell_id

    def runs(self) -> list[dict[str, Any]]:
        """The runs that computed this suite's cells, oldest first, with their host and argv."""
        rows = self.store.db.execute(
            """SELECT DISTINCT r.run_id, r.suite_name, r.suite_path, r.suite_hash, r.host, r.argv,
                      r.started_at, r.finished_at, r.status, r.versions_json
               FROM runs r WHERE r.suite_hash = ? OR r.run_id IN (
                   SELECT c.run_id FROM cells c JOIN suite_cells sc ON sc.cell_id = c.cell_id
                   WHERE sc.suite_hash = ?)
               ORDER BY r.started_at""",
            (self.suite_hash, self.suite_hash),
        ).fetchall()
        keys = ["run_id", "suite_name", "suite_path", "suite_hash", "host", "argv"]
        keys += ["started_at", "finished_at", "status", "versions"]
        out = []
        for row in rows:
            d = dict(zip(keys, row))
            d["argv"] = json.loads(d["argv"])
            d["versions"] = json.loads(d["versions"])
            out.append(d)
        return out

    def suite_document(self) -> dict[str, Any]:
        """The suite as recorded by its latest run (seeds, models, SAEs, training, evaluators)."""
        row = self.store.db.execute(
            "SELECT suite_json FROM runs WHERE suite_hash=? ORDER BY started_at DESC LIMIT 1",
            (self.suite_hash,),
        ).fetchone()
        if row is None:
            return {}
        try:
            doc = json.loads(row[0])
        except json.JSONDecodeError as exc:
            raise ResultsError(
                f"{self.store.path}: the recorded suite is not JSON ({exc})"
            ) from exc
        return doc if isinstance(doc, dict) else {}

    def provenance(self) -> dict[str, Any]:
        """Suite hash, plugin versions, seeds, run times and machines, for reports and exports."""
        done, total = self.store.progress(self.suite_hash)
        runs = self.runs()
        seconds = self.store.db.execute(
            """SELECT COALESCE(SUM(c.seconds), 0) FROM cells c
               JOIN suite_cells sc ON sc.cell_id = c.cell_id WHERE sc.suite_hash = ?""",
            (self.suite_hash,),
        ).fetchone()[0]
        seeds = sorted(
            {
                int(s)
                for (s,) in self.store.db.execute(
                    "SELECT DISTINCT seed FROM suite_cells WHERE suite_hash=?", (self.suite_hash,)
                )
            }
        )
        return {
            "suite_name": self.suite_name,
            "suite_hash": self.suite_hash,
            "results": str(self.store.path),
            "cells_done": done,
            "cells_total": total,
            "seeds": seeds,
            "versions": self.store.versions_for(self.suite_hash),
            "evaluation_seconds": float(seconds),
            "runs": [
                {k: r[k] for k in ("run_id", "host", "started_at", "finished_at", "status", "argv")}
                for r in runs
            ],
            "reader": {"python": platform.python_version(), "machine": platform.machine()},
        }

    def splits(self) -> list[tuple[str, str]]:
        """``(split, role)`` in suite order."""
        return [
            (str(s), str(r))
            for s, r in self.store.db.execute(
                "SELECT split, role FROM suite_splits WHERE suite_hash=? ORDER BY position",
                (self.suite_hash,),
            )
        ]

    def evaluators(self) -> list[str]:
        """Evaluator names in suite order (those with at least one cell)."""
        rows = self.store.db.execute(
            "SELECT evaluator, MIN(position) FROM suite_cells WHERE suite_hash=? GROUP BY evaluator "
            "ORDER BY MIN(position)",
            (self.suite_hash,),
        ).fetchall()
        return [str(r[0]) for r in rows]


def _extras(store: ResultsStore, suite_hash: str) -> Any:
    import pandas as pd

    rows = store.db.execute(
        """SELECT r.rowid, r.cell_id, r.extra_json, c.sae_id, c.sae_plugin, c.sae_config_json,
                  c.tokens, c.evaluator_version, c.run_id, c.seconds, c.finished_at
           FROM records r JOIN cells c ON c.cell_id = r.cell_id
           WHERE r.cell_id IN (SELECT cell_id FROM suite_cells WHERE suite_hash = ?)""",
        (suite_hash,),
    ).fetchall()
    cols = ["rid", "cell_id", "extra", "sae_id", "sae_plugin", "sae_config", "tokens"]
    cols += ["evaluator_version", "run_id", "seconds", "finished_at"]
    data = []
    for row in rows:
        d = dict(zip(cols, row))
        d["extra"] = _json(d["extra"])
        d["sae_config"] = _json(d["sae_config"])
        data.append(d)
    return pd.DataFrame(data, columns=cols)


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def open_results(
    target: str | Path,
    *,
    results: str | None = None,
    suite_hash: str | None = None,
    manager: Any = None,
) -> ResultSet:
    """Results of a suite file (its ``output``, or ``results``) or of a results folder."""
    from saebench_vision.results import open_store

    path = Path(target)
    if path.is_file():
        from saebench_vision.plugins import get_plugin_manager
        from saebench_vision.suite import load_suite

        manager = manager or get_plugin_manager()
        suite = load_suite(str(path), manager.registry(), output=results)
        store = open_store(suite.output, must_exist=True)
        return ResultSet.load(store, suite.hash)
    store = open_store(path, must_exist=True)
    return ResultSet.load(store, suite_hash)
