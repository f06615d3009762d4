"""Named, append-only schema migrations, shared by both backends.

Each step is a function ``mNNN_what_it_does(db)`` registered in :data:`MIGRATIONS`. A step's
identity is its name, recorded in ``_migrations`` once applied. A shipped step is never edited:
fixes are new steps. ``{BIGINT}``, ``{BLOB}`` and ``{WITHOUT_ROWID}`` in DDL are spelled per backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Backend = Literal["sqlite", "postgres"]

_SPELLING: dict[Backend, dict[str, str]] = {
    "sqlite": {"BIGINT": "INTEGER", "BLOB": "BLOB", "WITHOUT_ROWID": " WITHOUT ROWID"},
    "postgres": {"BIGINT": "BIGINT", "BLOB": "BYTEA", "WITHOUT_ROWID": ""},
}


@dataclass(slots=True)
class MigrationContext:
    """What a step sees: the backend's name and a way to run one statement."""

    backend: Backend
    run: Callable[[str], object]

    def execute(self, sql: str) -> None:
        self.run(sql.format_map(_SPELLING[self.backend]))


Migration = Callable[[MigrationContext], None]
MIGRATIONS: list[Migration] = []
migration = MIGRATIONS.append


def migration_names() -> list[str]:
    return [step.__name__ for step in MIGRATIONS]


@migration
def m001_initial(db: MigrationContext) -> None:
    # input_tokens IS NULL means the request produced no usage at all (refused, failed before
    # an answer); the other token columns are then NULL too. cost_nd IS NULL means unpriced.
    db.execute(
        """
        CREATE TABLE records (
            id TEXT PRIMARY KEY,
            ts_ms {BIGINT} NOT NULL,
            principal TEXT NOT NULL,
            identity_kind TEXT NOT NULL DEFAULT '',
            identity_source TEXT NOT NULL DEFAULT '',
            node_id TEXT,
            tags TEXT NOT NULL DEFAULT '',
            display_name TEXT,
            method TEXT NOT NULL DEFAULT '',
            path TEXT NOT NULL DEFAULT '',
            dialect TEXT NOT NULL DEFAULT '',
            operation TEXT NOT NULL DEFAULT '',
            provider TEXT,
            model TEXT,
            stream INTEGER NOT NULL DEFAULT 0,
            status INTEGER NOT NULL DEFAULT 0,
            outcome TEXT NOT NULL,
            error TEXT,
            duration_us {BIGINT} NOT NULL DEFAULT 0,
            ttfb_us {BIGINT},
            input_tokens {BIGINT},
            cache_read_tokens {BIGINT},
            cache_write_tokens {BIGINT},
            cache_write_5m_tokens {BIGINT},
            cache_write_1h_tokens {BIGINT},
            output_tokens {BIGINT},
            reasoning_tokens {BIGINT},
            tool_calls {BIGINT},
            web_search_requests {BIGINT},
            usage_partial INTEGER NOT NULL DEFAULT 0,
            service_tier TEXT,
            response_model TEXT,
            cost_nd {BIGINT},
            cost_basis TEXT,
            price_version TEXT,
            session_id TEXT,
            user_agent TEXT,
            request_id TEXT
        ){WITHOUT_ROWID}
        """
    )
    # Every listing is newest first with (ts_ms, id) as the keyset; one index per filter.
    for column in ("", "principal, ", "model, ", "provider, ", "status, ", "outcome, ", "session_id, "):
        name = column.split(",")[0] or "ts"
        db.execute(f"CREATE INDEX records_{name}_idx ON records ({column}ts_ms, id)")
    # Captures live apart from records so retention can drop them and keep the metrics.
    # Bodies and headers in one table, tool-use data in another ("purge": ["captures"] keeps tools).
    for table in ("capture_bodies", "capture_tools"):
        db.execute(
            f"""
            CREATE TABLE {table} (
                record_id TEXT PRIMARY KEY,
                ts_ms {{BIGINT}} NOT NULL,
                data {{BLOB}} NOT NULL
            )
            """
        )
        db.execute(f"CREATE INDEX {table}_ts_idx ON {table} (ts_ms)")


_TOTALS_COLUMNS = """
    requests {BIGINT} NOT NULL DEFAULT 0,
    errors {BIGINT} NOT NULL DEFAULT 0,
    input_tokens {BIGINT} NOT NULL DEFAULT 0,
    output_tokens {BIGINT} NOT NULL DEFAULT 0,
    cache_read_tokens {BIGINT} NOT NULL DEFAULT 0,
    cache_write_tokens {BIGINT} NOT NULL DEFAULT 0,
    cache_write_5m_tokens {BIGINT} NOT NULL DEFAULT 0,
    cache_write_1h_tokens {BIGINT} NOT NULL DEFAULT 0,
    reasoning_tokens {BIGINT} NOT NULL DEFAULT 0,
    tool_calls {BIGINT} NOT NULL DEFAULT 0,
    web_search_requests {BIGINT} NOT NULL DEFAULT 0,
    cost_nd {BIGINT} NOT NULL DEFAULT 0,
    unpriced {BIGINT} NOT NULL DEFAULT 0,
    duration_us {BIGINT} NOT NULL DEFAULT 0
"""

# The same sums, computed from raw records, for back-filling.
_TOTALS_FROM_RECORDS = """
    COUNT(*),
    SUM(CASE WHEN outcome <> 'ok' THEN 1 ELSE 0 END),
    COALESCE(SUM(input_tokens), 0),
    COALESCE(SUM(output_tokens), 0),
    COALESCE(SUM(cache_read_tokens), 0),
    COALESCE(SUM(cache_write_tokens), 0),
    COALESCE(SUM(cache_write_5m_tokens), 0),
    COALESCE(SUM(cache_write_1h_tokens), 0),
    COALESCE(SUM(reasoning_tokens), 0),
    COALESCE(SUM(tool_calls), 0),
    COALESCE(SUM(web_search_requests), 0),
    COALESCE(SUM(cost_nd), 0),
    SUM(CASE WHEN cost_nd IS NULL AND input_tokens IS NOT NULL THEN 1 ELSE 0 END),
    SUM(duration_us)
"""

_TOTALS_NAMES = (
    "requests, errors, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
    "cache_write_5m_tokens, cache_write_1h_tokens, reasoning_tokens, tool_calls, "
    "web_search_requests, cost_nd, unpriced, duration_us"
)


@migration
def m002_sessions_and_rollups(db: MigrationContext) -> None:
    # Dashboards read these small tables, maintained as records are inserted, never the raw log.
    # A session belongs to one principal: a client-chosen session id cannot mix two callers' data.
    db.execute(
        f"""
        CREATE TABLE sessions (
            principal TEXT NOT NULL,
            session_id TEXT NOT NULL,
            first_ts_ms {{BIGINT}} NOT NULL,
            last_ts_ms {{BIGINT}} NOT NULL,
            last_model TEXT,
            user_agent TEXT,
            {_TOTALS_COLUMNS},
            PRIMARY KEY (principal, session_id)
        ){{WITHOUT_ROWID}}
        """
    )
    db.execute("CREATE INDEX sessions_last_idx ON sessions (last_ts_ms, principal, session_id)")
    db.execute("CREATE INDEX sessions_principal_last_idx ON sessions (principal, last_ts_ms, session_id)")
    # day: days since 1970-01-01 UTC. provider and model are '' when the request had none.
    # Clustered on the key, in the order the CSV export groups by: a range of days is one scan.
    db.execute(
        f"""
        CREATE TABLE rollups (
            day INTEGER NOT NULL,
            principal TEXT NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            {_TOTALS_COLUMNS},
            PRIMARY KEY (day, principal, model, provider)
        ){{WITHOUT_ROWID}}
        """
    )
    db.execute("CREATE INDEX rollups_principal_idx ON rollups (principal, day)")
    db.execute(
        f"""
        INSERT INTO rollups (day, principal, provider, model, {_TOTALS_NAMES})
        SELECT ts_ms / 86400000, principal, COALESCE(provider, ''), COALESCE(model, ''),
               {_TOTALS_FROM_RECORDS}
        FROM records GROUP BY ts_ms / 86400000, principal, COALESCE(provider, ''), COALESCE(model, '')
        """
    )
    db.execute(
        f"""
        INSERT INTO sessions (principal, session_id, first_ts_ms, last_ts_ms, last_model, user_agent,
                              {_TOTALS_NAMES})
        SELECT principal, session_id, MIN(ts_ms), MAX(ts_ms),
               (SELECT l.model FROM records l WHERE l.principal = r.principal
                AND l.session_id = r.session_id ORDER BY l.ts_ms DESC, l.id DESC LIMIT 1),
               (SELECT f.user_agent FROM records f WHERE f.principal = r.principal
                AND f.session_id = r.session_id ORDER BY f.ts_ms, f.id LIMIT 1),
               {_TOTALS_FROM_RECORDS}
        FROM records r WHERE session_id IS NOT NULL GROUP BY principal, session_id
        """
    )


@migration
def m003_api_keys(db: MigrationContext) -> None:
    # Only a hash of the key is kept; prefix is the first characters, shown to tell keys apart.
    # Times are epoch microseconds UTC.
    db.execute(
        """
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            principal TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            created_at {BIGINT} NOT NULL,
            expires_at {BIGINT},
            revoked_at {BIGINT}
        )
        """
    )
    db.execute("CREATE INDEX api_keys_principal_idx ON api_keys (principal)")


@migration
def m004_quota_buckets(db: MigrationContext) -> None:
    # Nanodollars; updated_at_us is when balance_nd was last refilled or charged.
    db.execute(
        """
        CREATE TABLE quota_buckets (
            name TEXT PRIMARY KEY,
            balance_nd {BIGINT} NOT NULL,
            updated_at_us {BIGINT} NOT NULL,
            capacity_nd {BIGINT} NOT NULL,
            rate_nd {BIGINT} NOT NULL,
            rate_period_s {BIGINT} NOT NULL
        )
        """
    )


@migration
def m005_records_principal_model_idx(db: MigrationContext) -> None:
    # Logs filtered by user and model: with only the one-column indexes, a model the user
    # rarely calls meant scanning all of that user's records (120 ms at 10M records).
    db.execute("CREATE INDEX records_principal_model_idx ON records (principal, model, ts_ms, id)")
