-- Presence (consumer group fedpipe-presence writes; the relay and the router read).

-- Who is syncing where: one row per (instance, user) while the user syncs there.
-- A user is syncing while any instance has a row for them.
CREATE TABLE presence_syncing (
    instance text NOT NULL,
    user_id  text NOT NULL,
    PRIMARY KEY (instance, user_id)
);
CREATE INDEX presence_syncing_user ON presence_syncing (user_id);

-- When each sync worker was last heard of (ms since the epoch); one silent for
-- presence.instance_timeout is treated as cleared.
CREATE TABLE presence_instances (
    instance     text PRIMARY KEY,
    last_seen_ms bigint NOT NULL
);

-- Each local user's presence as the presence stage computes it (Synapse's
-- UserPresenceState). next_check_ms is when a timer may change it next (idle,
-- sync timeout, currently_active expiry or the federation ping); NULL when no
-- timer runs (offline).
CREATE TABLE presence_state (
    user_id                   text PRIMARY KEY,
    state                     text NOT NULL CHECK (state IN ('online', 'unavailable', 'offline')),
    status_msg                text,
    last_active_ts            bigint NOT NULL DEFAULT 0,
    last_user_sync_ts         bigint NOT NULL DEFAULT 0,
    last_federation_update_ts bigint NOT NULL DEFAULT 0,
    currently_active          boolean NOT NULL DEFAULT false,
    next_check_ms             bigint
);
CREATE INDEX presence_state_due ON presence_state (next_check_ms) WHERE next_check_ms IS NOT NULL;

-- The presence stream the relay publishes to <prefix>.presence: each user's
-- last state that remote servers should be told, at a position of the shared
-- stream sequence (so the relay's visibility rule covers it). One row per user:
-- a newer change replaces an older one not yet published, as in Synapse.
CREATE TABLE presence_stream (
    stream_id        bigint NOT NULL UNIQUE,
    user_id          text PRIMARY KEY,
    state            text NOT NULL,
    status_msg       text,
    last_active_ts   bigint NOT NULL,
    currently_active boolean NOT NULL
);

-- Presence destinations are the servers sharing a room with a user: find a
-- user's rooms, and each room's servers, by index.
ALTER TABLE router_room_members
    ADD COLUMN server text GENERATED ALWAYS AS (substr(user_id, strpos(user_id, ':') + 1)) STORED;
CREATE INDEX router_room_members_user ON router_room_members (user_id);
CREATE INDEX router_room_members_room_server ON router_room_members (room_id, server);
