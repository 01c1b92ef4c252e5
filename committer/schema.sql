-- flashsale schema (committer/ is its only writer). Idempotent; applied by committer/schema.py (whenever it changed) at every start. Times are epoch milliseconds.

CREATE TABLE IF NOT EXISTS skus (
    sku               text PRIMARY KEY,
    stock             integer NOT NULL CHECK (stock >= 0),
    reserved          integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold              integer NOT NULL DEFAULT 0 CHECK (sold >= 0),
    price_cents       bigint  NOT NULL DEFAULT 0 CHECK (price_cents >= 0),
    max_per_user      integer CHECK (max_per_user IS NULL OR max_per_user > 0),
    payment           text    NOT NULL DEFAULT 'none' CHECK (payment IN ('none', 'required')),
    reservation_ttl_s integer NOT NULL DEFAULT 600 CHECK (reservation_ttl_s > 0),
    sale_start_ms     bigint,
    sale_end_ms       bigint,
    updated_at_ms     bigint  NOT NULL,
    -- Invariant 1, enforced by the database itself at every commit.
    CONSTRAINT never_oversell CHECK (reserved + sold <= stock)
);

CREATE TABLE IF NOT EXISTS purchases (
    id             text PRIMARY KEY,  -- derived from (user, idempotency key): invariant 2
    sku            text    NOT NULL,
    user_id        text    NOT NULL,
    qty            integer NOT NULL CHECK (qty > 0),
    status         text    NOT NULL
        CHECK (status IN ('reserved', 'confirmed', 'rejected', 'expired', 'cancelled')),
    reason         text,
    amount_cents   bigint  NOT NULL,
    request_hash   text    NOT NULL,
    accepted_at_ms bigint  NOT NULL,
    decided_at_ms  bigint  NOT NULL,
    updated_at_ms  bigint  NOT NULL,
    expires_at_ms  bigint,
    psp_ref        text,
    CHECK (status <> 'reserved' OR expires_at_ms IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS purchases_sku_user ON purchases (sku, user_id);
CREATE INDEX IF NOT EXISTS purchases_reserved ON purchases (sku) WHERE status = 'reserved';

-- Invariant 5: one writer per shard. A committer takes the shard by bumping the epoch, only
-- once the previous holder's lease has expired; every batch it commits checks, in the same
-- transaction, that it still holds that epoch (and renews the lease). Times here are the
-- database's clock, so the processes' clocks never decide who writes.
CREATE TABLE IF NOT EXISTS shard_leases (
    shard          integer PRIMARY KEY,
    epoch          bigint  NOT NULL,
    owner          text    NOT NULL,
    acquired_at_ms bigint  NOT NULL,
    renewed_at_ms  bigint  NOT NULL,
    expires_at_ms  bigint  NOT NULL DEFAULT 0
);
-- Databases created before leases had a TTL: their leases count as expired.
ALTER TABLE shard_leases ADD COLUMN IF NOT EXISTS expires_at_ms bigint NOT NULL DEFAULT 0;

-- The shard map (flashsale/shardmap.py): how many shards there are and which function puts a SKU
-- on one. One row, written by the first schema application and changed only by
-- `flashsale reshard` between sales; every process refuses to act when configured otherwise.
CREATE TABLE IF NOT EXISTS shard_map (
    one           boolean PRIMARY KEY DEFAULT true CHECK (one),
    shards        integer NOT NULL CHECK (shards >= 1),
    function      text    NOT NULL,
    changed_at_ms bigint  NOT NULL
);

-- The digest of this file as last applied (committer/schema.py): an unchanged schema is not
-- executed again, so a start beside running services takes no table lock.
CREATE TABLE IF NOT EXISTS schema_applied (
    one           boolean PRIMARY KEY DEFAULT true CHECK (one),
    digest        text    NOT NULL,
    applied_at_ms bigint  NOT NULL
);

-- Fair drops (committer/draw.py). A SKU's draw: its window, its seed (secret until drawn_at_ms:
-- only sha256(seed) is shown before), and how many entries it had.
ALTER TABLE skus ADD COLUMN IF NOT EXISTS draw_window_s integer NOT NULL DEFAULT 0
    CHECK (draw_window_s >= 0);
ALTER TABLE skus ADD COLUMN IF NOT EXISTS draw_seed text;
ALTER TABLE skus ADD COLUMN IF NOT EXISTS drawn_at_ms bigint;
ALTER TABLE skus ADD COLUMN IF NOT EXISTS draw_entries integer NOT NULL DEFAULT 0;
-- Every reader computes sha256 of the seed's bytes: only 32 bytes in hex are ever stored, and a
-- draw window never without a seed.
DO $$ BEGIN
    ALTER TABLE skus ADD CONSTRAINT draw_seed_hex CHECK (
        (draw_seed IS NULL OR draw_seed ~ '^[0-9a-f]{64}$')
        AND (draw_window_s = 0 OR draw_seed IS NOT NULL));
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
-- A purchase decided by a draw: its 1-based rank there.
ALTER TABLE purchases ADD COLUMN IF NOT EXISTS draw_rank integer;
CREATE INDEX IF NOT EXISTS purchases_draw ON purchases (sku, draw_rank) WHERE draw_rank IS NOT NULL;
-- Purchases waiting for their SKU's draw (acked intents, not decided yet): written with the batch
-- that took them, deleted by the batch that decides the draw. Never a card token: a paid entry's
-- token is read back from the intents stream when the draw makes it a reservation.
CREATE TABLE IF NOT EXISTS draw_entries (
    id             text PRIMARY KEY,
    sku            text    NOT NULL,
    user_id        text    NOT NULL,
    qty            integer NOT NULL CHECK (qty > 0),
    request_hash   text    NOT NULL,
    accepted_at_ms bigint  NOT NULL,
    clicked_at_ms  bigint  NOT NULL,
    arrival        integer NOT NULL,
    ranked         boolean NOT NULL  -- clicked inside the window; else waiting for the draw
);
CREATE INDEX IF NOT EXISTS draw_entries_sku ON draw_entries (sku, arrival);

-- Where a purchase's intent is stored: the intents stream sequence of the message holding it
-- (ingest packs many intents in one message). A card token is kept there only; a writer reads it
-- back from there for a live reservation after a restart. NULL: not known.
ALTER TABLE purchases ADD COLUMN IF NOT EXISTS intent_seq bigint;
ALTER TABLE draw_entries ADD COLUMN IF NOT EXISTS intent_seq bigint;
