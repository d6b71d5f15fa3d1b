"""What an attacker with write access to a SQLite ledger file does to plant values that are not
what was signed: the guard triggers go, and a schema-2 table (STRICT, with typeof CHECKs per
column) is rebuilt without its checks first, since the database itself refuses such values."""

from __future__ import annotations

import sqlite3

from autoweld.quality.ledger import TABLE

#: the table of schema 1 (AutoWeld before typed storage), as its DDL created it
SCHEMA_1_DDL = f"""
CREATE TABLE {TABLE} (
    station_id TEXT NOT NULL,
    seq BIGINT NOT NULL CHECK (seq >= 1),
    record_id TEXT NOT NULL UNIQUE,
    utc_time TEXT NOT NULL,
    part_id TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    package_version TEXT NOT NULL,
    scores_json TEXT NOT NULL,
    probabilities_json TEXT NOT NULL,
    fused_probability DOUBLE PRECISION,
    threshold DOUBLE PRECISION,
    decision TEXT NOT NULL CHECK (decision IN ('PASS', 'FAIL')),
    heatmap_sha256 TEXT,
    heatmap_path TEXT,
    plc_delivered BOOLEAN,
    error TEXT,
    key_id TEXT NOT NULL,
    prev_mac TEXT NOT NULL,
    mac TEXT NOT NULL,
    PRIMARY KEY (station_id, seq)
)"""
SCHEMA_1_COLUMNS = (
    "station_id", "seq", "record_id", "utc_time", "part_id", "bundle_sha256", "package_version",
    "scores_json", "probabilities_json", "fused_probability", "threshold", "decision",
    "heatmap_sha256", "heatmap_path", "plc_delivered", "error", "key_id", "prev_mac", "mac",
)  # fmt: skip


def drop_guards(conn: sqlite3.Connection, rebuild: bool) -> None:
    """Drop the append-only triggers; with ``rebuild``, also copy the table into one of the same
    columns (by affinity) without STRICT or CHECKs."""
    conn.execute(f"DROP TRIGGER IF EXISTS {TABLE}_no_update")
    conn.execute(f"DROP TRIGGER IF EXISTS {TABLE}_no_delete")
    if not rebuild:
        return
    columns = [(row[1], row[2]) for row in conn.execute(f"PRAGMA table_info({TABLE})")]
    declared = ", ".join(f"{name} {kind}" for name, kind in columns)
    conn.execute(f"CREATE TABLE unchecked ({declared}, PRIMARY KEY (station_id, seq))")
    conn.execute(f"INSERT INTO unchecked SELECT * FROM {TABLE}")
    conn.execute(f"DROP TABLE {TABLE}")
    conn.execute(f"ALTER TABLE unchecked RENAME TO {TABLE}")


def tamper(path, *statements: str, rebuild: bool = True) -> None:
    """Run ``statements`` on the ledger file at ``path`` as that attacker."""
    conn = sqlite3.connect(path)
    try:
        drop_guards(conn, rebuild)
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()  # an edit the database refused is rolled back with the rest


def make_schema_1_ledger(path) -> None:
    """An empty ledger file exactly as AutoWeld before typed storage created it."""
    conn = sqlite3.connect(path)
    conn.execute(SCHEMA_1_DDL)
    conn.execute("CREATE TABLE ledger_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO ledger_meta VALUES ('schema_version', '1')")
    for op in ("UPDATE", "DELETE"):
        conn.execute(f"""CREATE TRIGGER {TABLE}_no_{op.lower()} BEFORE {op} ON {TABLE}
                         BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only: {op} refused'); END""")
    conn.commit()
    conn.close()
