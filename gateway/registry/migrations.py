"""
Versioned schema. Each entry is applied once, in order, inside one transaction,
and ``schema_version`` records how far a database has come. Never edit an
applied entry: append a new one. The SQL is the common subset of SQLite and
PostgreSQL.
"""

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE registrations (
            component TEXT NOT NULL,
            jid TEXT NOT NULL,
            foreign_id TEXT,
            settings TEXT NOT NULL,
            secrets TEXT,
            subscribed BOOLEAN NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (component, jid))""",
        "CREATE UNIQUE INDEX registrations_foreign ON registrations (component, foreign_id)",
        """CREATE TABLE address_map (
            component TEXT NOT NULL,
            address TEXT NOT NULL,
            localpart TEXT NOT NULL,
            PRIMARY KEY (component, address))""",
        "CREATE UNIQUE INDEX address_map_local ON address_map (component, localpart)",
        """CREATE TABLE message_ids (
            component TEXT NOT NULL,
            jid TEXT NOT NULL,
            xmpp_id TEXT NOT NULL,
            foreign_id TEXT NOT NULL,
            contact TEXT NOT NULL,
            resource TEXT,
            receipt BOOLEAN NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (component, jid, xmpp_id))""",
        "CREATE INDEX message_ids_foreign ON message_ids (component, foreign_id)",
        """CREATE TABLE queue (
            id TEXT PRIMARY KEY,
            component TEXT NOT NULL,
            jid TEXT NOT NULL,
            direction TEXT NOT NULL,
            payload TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            next_attempt DOUBLE PRECISION NOT NULL,
            deadline DOUBLE PRECISION NOT NULL,
            claimed_by TEXT,
            claimed_until DOUBLE PRECISION,
            last_error TEXT,
            created_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX queue_due ON queue (component, direction, next_attempt)",
        "CREATE INDEX queue_user ON queue (component, jid)",
    ]),
    (2, [
        # Per-user counters for adapters' limits (SMS per day, ...): one row per period.
        """CREATE TABLE counters (
            component TEXT NOT NULL,
            jid TEXT NOT NULL,
            name TEXT NOT NULL,
            period TEXT NOT NULL,
            value INTEGER NOT NULL,
            PRIMARY KEY (component, jid, name, period))""",
    ]),
    (3, [
        # Conversation threads on networks that thread by message ids (email's
        # Message-ID / References): which ids belong to which XMPP <thread/>.
        """CREATE TABLE threads (
            component TEXT NOT NULL,
            jid TEXT NOT NULL,
            thread TEXT NOT NULL,
            message_id TEXT NOT NULL,
            subject TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (component, jid, message_id))""",
        "CREATE INDEX threads_thread ON threads (component, jid, thread, created_at)",
    ]),
]
MIGRATIONS.append(
    (4, [
        # Fenced leases: every claim gets a fresh token, and finishing, releasing,
        # parking or renewing a row is conditional on it, so a process whose
        # lease ran out can never act on a row another process took over.
        "ALTER TABLE queue ADD COLUMN claim_token TEXT",
        # Dead letters: a row that cannot become a stanza or a send is parked
        # with its reason instead of blocking the rows behind it.
        "ALTER TABLE queue ADD COLUMN parked_at DOUBLE PRECISION",
        # Foreign message ids already accepted (an SMS provider's retry or a
        # replayed webhook is acknowledged but not delivered twice).
        """CREATE TABLE seen (
            component TEXT NOT NULL,
            key TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (component, key))""",
        "CREATE INDEX seen_age ON seen (created_at)",
        # Live gateway processes: instance ids must be unique, and the claims of
        # a process found dead are given back at once.
        """CREATE TABLE instances (
            instance_id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            heartbeat DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION NOT NULL)""",
    ]))
MIGRATIONS.append(
    (5, [
        # A message the network took without confirming it (an SMS whose answer
        # was lost): if no verdict arrives by this time, its sender is told.
        "ALTER TABLE message_ids ADD COLUMN verdict_by DOUBLE PRECISION",
        "CREATE INDEX message_ids_verdict ON message_ids (component, verdict_by)",
    ]))
MIGRATIONS.append(
    (6, [
        # The retention job (gateway/registry/retention.py) deletes old rows in
        # batches: finding them must not scan the whole table each time.
        "CREATE INDEX message_ids_age ON message_ids (created_at)",
        "CREATE INDEX threads_age ON threads (created_at)",
        "CREATE INDEX counters_period ON counters (period)",
    ]))
MIGRATIONS.append(
    (7, [
        # Values that belong to the registry itself, shared by every process
        # that opens it: the random salt passphrase keys are stretched with
        # (row 'kdf_salt', written on first open; see gateway/registry/crypto.py).
        """CREATE TABLE registry_meta (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL)""",
    ]))
MIGRATIONS.append(
    (8, [
        # The room archive (XEP-0313 on rooms, history on join): per user and
        # room, what that user's own connection received, as biboumi keeps it.
        # ``seq`` orders a room's messages (time-ordered, unique: see
        # gateway/bridge/archive.py); ``id`` is the XEP-0359 stanza-id users saw
        # (the network's msgid when it gave one). Times are integer microseconds
        # so a stamp a client sends back names exactly the same instant.
        """CREATE TABLE room_archive (
            component TEXT NOT NULL,
            jid TEXT NOT NULL,
            room TEXT NOT NULL,
            seq TEXT NOT NULL,
            id TEXT NOT NULL,
            nick TEXT NOT NULL,
            body TEXT NOT NULL,
            origin_id TEXT,
            stamp_us BIGINT NOT NULL,
            created_us BIGINT NOT NULL,
            PRIMARY KEY (component, jid, room, seq))""",
        "CREATE INDEX room_archive_id ON room_archive (component, jid, room, id)",
        "CREATE INDEX room_archive_age ON room_archive (created_us)",
    ]))
MIGRATIONS.append(
    (9, [
        # Contacts put in a user's roster (XEP-0356 roster push, or a subscription
        # request when the server grants no roster access): each one once.
        """CREATE TABLE roster_contacts (
            component TEXT NOT NULL,
            jid TEXT NOT NULL,
            address TEXT NOT NULL,
            method TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (component, jid, address))""",
    ]))
