"""``saebench export``: a suite's results in a versioned, documented schema (docs/export.md).

Formats:

* ``json``: one document ``{"schema", "schema_version", "provenance", "records", "summary",
  "paired", "matched"}``; ``records`` are the stored numbers, one per (cell, metric, split), each
  with its cell, SAE config, evaluator version, seed, run and that run's plugin versions;
  ``summary`` the aggregated rows with their intervals; ``paired`` the item-wise comparisons;
  ``matched`` the matched-sparsity rows when ``--at-l0`` or ``--l0-budget`` is given.
* ``csv``: the records table only (nested fields as JSON strings), one header row, with
  ``schema_version``, ``suite_hash`` and ``plugin_versions`` columns so every row stands alone.
* ``parquet``: the same table (needs ``pyarrow``: ``pip install "saebench-vision[parquet]"``),
  the provenance JSON in the file's key-value metadata under ``saebench_vision``.

The schema is versioned: a reader checks ``schema`` == ``"saebench-vision/results"`` and
``schema_version``; new fields may be added within a version, none renamed or removed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from saebench_vision.errors import SaebenchError
from saebench_vision.summary import StatsOptions, paired_rows, summarise

SCHEMA = "saebench-vision/results"
SCHEMA_VERSION = 1
FORMATS = ("json", "csv", "parquet")

RECORD_COLUMNS = (
    "schema_version",
    "suite_hash",
    "suite_name",
    "cell_id",
    "run_id",
    "model",
    "layer",
    "tokens",
    "sae_id",
    "sae_label",
    "sae_plugin",
    "sae_config",
    "evaluator",
    "evaluator_version",
    "seed",
    "metric",
    "split",
    "role",
    "value",
    "stderr",
    "higher_is_better",
    "n",
    "headline",
    "seconds",
    "finished_at",
    "extra",
    "plugin_versions",
)
"""Columns of the records table, in order (docs/export.md describes each)."""


class ExportError(SaebenchError):
    """An export option or target that cannot work."""


def _clean(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            return _clean(v.item())
        except (TypeError, ValueError):
            return v
    return v


def records(results: Any) -> list[dict[str, Any]]:
    """Every stored record of the suite as a flat dict with the columns of ``RECORD_COLUMNS``."""
    versions = {r["run_id"]: r["versions"] for r in results.runs()}
    out = []
    for _, r in results.frame.iterrows():
        hib = _clean(r["higher_is_better"])
        out.append(
            {
                "schema_version": SCHEMA_VERSION,
                "suite_hash": results.suite_hash,
                "suite_name": results.suite_name,
                "cell_id": r["cell_id"],
                "run_id": r["run_id"],
                "model": r["model"],
                "layer": r["layer"],
                "tokens": r["tokens"],
                "sae_id": r["sae_id"],
                "sae_label": r["sae_label"],
                "sae_plugin": r["sae_plugin"],
                "sae_config": r["sae_config"] if isinstance(r["sae_config"], dict) else {},
                "evaluator": r["evaluator"],
                "evaluator_version": r["evaluator_version"],
                "seed": int(r["seed"]),
                "metric": r["metric"],
                "split": r["split"],
                "role": _clean(r["role"]),
                "value": _clean(r["value"]),
                "stderr": _clean(r["stderr"]),
                "higher_is_better": None if hib is None else bool(hib),
                "n": None if _clean(r["n"]) is None else int(r["n"]),
                "headline": bool(r["headline"]),
                "seconds": _clean(r["seconds"]),
                "finished_at": _clean(r["finished_at"]),
                "extra": r["extra"] if isinstance(r["extra"], dict) else {},
                "plugin_versions": versions.get(r["run_id"], {}),
            }
        )
    return out


def _flat(rec: dict[str, Any]) -> dict[str, Any]:
    return {
        k: json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else v
        for k, v in rec.items()
    }


def document(
    results: Any, stats_options: StatsOptions, matched: list[Any] | None = None
) -> dict[str, Any]:
    """The JSON export as a dict."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "provenance": {**results.provenance(), "intervals": stats_options.describe()},
        "records": records(results),
        "summary": [r.as_dict() for r in summarise(results, stats_options)],
        "paired": [p.as_dict() for p in paired_rows(results, None, stats_options)],
        "matched": [
            {
                "model": m.model,
                "layer": m.layer,
                "front": m.front,
                "front_by": list(m.front_by),
                "l0_metric": m.l0_metric,
                "metric": m.metric,
                "split": m.split,
                "higher_is_better": m.higher_is_better,
                "at_l0": [{"l0": k, "value": _clean(v)} for k, v in m.at_l0.items()],
                "budget": m.budget,
                "best": None
                if m.best is None
                else {"value": m.best[0], "l0": m.best[1], "sae_label": m.best[2]},
                "points": [{"l0": x, "value": y, "sae_label": s} for x, y, s in m.points],
            }
            for m in matched or []
        ],
    }


def export(
    results: Any,
    fmt: str,
    out: Path | None,
    stats_options: StatsOptions | None = None,
    matched: list[Any] | None = None,
) -> str | None:
    """Write the export to ``out`` (atomically), or return it as text when ``out`` is None."""
    from saebench_vision.cache import atomic_write_text

    stats_options = stats_options or StatsOptions()
    if fmt not in FORMATS:
        raise ExportError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "json":
        text = json.dumps(document(results, stats_options, matched), indent=1, default=str) + "\n"
    elif fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(RECORD_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for rec in records(results):
            writer.writerow(_flat(rec))
        text = buf.getvalue()
    else:
        if out is None:
            raise ExportError("--format parquet writes a binary file: give --out FILE.parquet")
        _parquet(results, out, stats_options)
        return None
    if out is None:
        return text
    atomic_write_text(out, text)
    return None


def _parquet(results: Any, out: Path, stats_options: StatsOptions) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ExportError(
            'parquet export needs pyarrow: pip install "saebench-vision[parquet]" (or use --format csv)'
        ) from exc
    import os
    import uuid

    rows = [_flat(r) for r in records(results)]
    columns = {c: [r[c] for r in rows] for c in RECORD_COLUMNS}
    types = {
        "schema_version": pa.int32(),
        "seed": pa.int64(),
        "n": pa.int64(),
        "value": pa.float64(),
        "stderr": pa.float64(),
        "seconds": pa.float64(),
        "finished_at": pa.float64(),
        "higher_is_better": pa.bool_(),
        "headline": pa.bool_(),
    }
    schema = pa.schema([(c, types.get(c, pa.string())) for c in RECORD_COLUMNS])
    meta = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "provenance": {**results.provenance(), "intervals": stats_options.describe()},
    }
    table = pa.table(columns, schema=schema).replace_schema_metadata(
        {"saebench_vision": json.dumps(meta, default=str)}
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
