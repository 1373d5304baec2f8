"""The schema as versioned migrations, in SQL both SQLite and PostgreSQL accept. ``{id}`` is the
dialect's auto-increment key. Each migration moves the schema one version up; never edit one that
has shipped: add the next."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE periods (
            period BIGINT PRIMARY KEY, block BIGINT NOT NULL, block_hash TEXT NOT NULL,
            share DOUBLE PRECISION NOT NULL, started_at DOUBLE PRECISION NOT NULL,
            finished INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE targets (
            period BIGINT NOT NULL, uid INTEGER NOT NULL, hotkey TEXT NOT NULL, task TEXT NOT NULL,
            declared DOUBLE PRECISION NOT NULL, budget DOUBLE PRECISION NOT NULL,
            f DOUBLE PRECISION NOT NULL, audit INTEGER NOT NULL, reason TEXT NOT NULL,
            registered_at BIGINT NOT NULL, PRIMARY KEY (period, hotkey, task))""",
        """CREATE TABLE requests (
            id {id}, period BIGINT NOT NULL, hotkey TEXT NOT NULL, task TEXT NOT NULL,
            organic INTEGER NOT NULL, outcome TEXT NOT NULL, units DOUBLE PRECISION NOT NULL,
            latency_s DOUBLE PRECISION NOT NULL, quality DOUBLE PRECISION,
            at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX requests_period ON requests (period, hotkey, task)",
        """CREATE TABLE states (
            hotkey TEXT NOT NULL, task TEXT NOT NULL, period BIGINT NOT NULL, state TEXT NOT NULL,
            PRIMARY KEY (hotkey, task))""",
        """CREATE TABLE weights_set (
            block BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL, weights TEXT NOT NULL)""",
    ),
    (
        """CREATE TABLE api_keys (
            name TEXT PRIMARY KEY, prefix TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
            per_minute INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION)""",
    ),
    (
        # what each contender's budget has spent, kept where every API replica reserves it
        "ALTER TABLE targets ADD COLUMN used DOUBLE PRECISION NOT NULL DEFAULT 0",
    ),
    (
        # a period sealed for scoring takes no more records: late ones go to the next period
        "ALTER TABLE periods ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0",
    ),
    (
        # API requests per key and clock minute, shared by every replica on the database
        """CREATE TABLE api_use (
            name TEXT NOT NULL, minute BIGINT NOT NULL, used INTEGER NOT NULL,
            PRIMARY KEY (name, minute))""",
    ),
    (
        # protocol 5: rate windows replace audits; a protocol-4 state means nothing now
        "ALTER TABLE targets DROP COLUMN f",
        "ALTER TABLE targets DROP COLUMN audit",
        "ALTER TABLE targets DROP COLUMN reason",
        "DELETE FROM states",
        """CREATE TABLE windows (
            period BIGINT NOT NULL, block BIGINT NOT NULL, started_at DOUBLE PRECISION NOT NULL,
            seconds DOUBLE PRECISION NOT NULL, PRIMARY KEY (period, block))""",
    ),
    (
        # shared window reports (docs/protocol.md §9): each validator's report of each window,
        # its own and those fetched; the permitted stakes they are pooled by; how each window
        # was scored (coverage of stake, whose reports; NULL: not yet, or own view)
        """CREATE TABLE reports (
            period BIGINT NOT NULL, block BIGINT NOT NULL, validator TEXT NOT NULL,
            body TEXT NOT NULL, received_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (block, validator))""",
        "ALTER TABLE periods ADD COLUMN stakes TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE windows ADD COLUMN coverage DOUBLE PRECISION",
        "ALTER TABLE windows ADD COLUMN pooled_from TEXT",
    ),
    (
        # why a checked answer failed its check (NULL: passed, or not checked): a miner's
        # feedback says what failed, not only that something did
        "ALTER TABLE requests ADD COLUMN why TEXT",
    ),
    (
        # weights under commit-reveal are committed first and revealed at a drand round: the
        # vector's state (set, committed, revealed) and its round (NULL: set in the clear)
        "ALTER TABLE weights_set ADD COLUMN status TEXT NOT NULL DEFAULT 'set'",
        "ALTER TABLE weights_set ADD COLUMN reveal_round BIGINT",
    ),
    (
        # protocol 6: the declaration each miner signed for a period, as this validator got it
        # (docs/protocol.md §2); carried in its window reports, and compared with the others'
        """CREATE TABLE declarations (
            period BIGINT NOT NULL, hotkey TEXT NOT NULL, body TEXT NOT NULL,
            PRIMARY KEY (period, hotkey))""",
    ),
    (
        # a check that ends after its record's period was sealed counts at the next close
        # (docs/protocol.md §8): that period, NULL for a check that ended in time
        "ALTER TABLE requests ADD COLUMN counted_in BIGINT",
        "CREATE INDEX requests_counted_in ON requests (counted_in) WHERE counted_in IS NOT NULL",
    ),
    (
        # the processes of a validator on one database (docs/protocol.md §6): each alive at
        # ``seen`` (the database's clock), saying so every ``every`` seconds, the one that runs
        # the period loop marked; per window, those sharing it, who began each part (NULL: not
        # yet) and what each sent (NULL: still sending)
        """CREATE TABLE senders (
            member TEXT PRIMARY KEY, seen DOUBLE PRECISION NOT NULL,
            every DOUBLE PRECISION NOT NULL, leads INTEGER NOT NULL DEFAULT 0)""",
        # what each process holds of a budget for a request not recorded yet, so that what a
        # dead process held is given back and nothing a live one holds (docs/protocol.md §6)
        # (a hold is named by its process and a number that process never uses twice)
        """CREATE TABLE held (
            member TEXT NOT NULL, seq BIGINT NOT NULL, period BIGINT NOT NULL,
            hotkey TEXT NOT NULL, task TEXT NOT NULL, units DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (member, seq))""",
        """CREATE TABLE window_senders (
            period BIGINT NOT NULL, block BIGINT NOT NULL, member TEXT NOT NULL,
            started TEXT, requests INTEGER, done DOUBLE PRECISION,
            PRIMARY KEY (block, member))""",
    ),
)
