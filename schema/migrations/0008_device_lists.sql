-- Device-list updates (m.device_list_update) and cross-signing key updates
-- (m.signing_key_update), durable end to end.
--
-- device_lists_stream is the homeserver's side, written by the producer
-- library (producers/outbox.UpdateDevices, UpdateSigningKeys) in the caller's
-- transaction: one row per update of a local user's device or signing keys.
-- The relay publishes it to <prefix>.devicelists (keyed by user_id); the
-- router sends each to the servers sharing a room with the user.
CREATE TABLE device_lists_stream (
    stream_id   bigint PRIMARY KEY DEFAULT fedpipe_next_stream_ordering(),
    user_id     text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('device', 'signing_keys')),
    device_id   text NOT NULL DEFAULT '',  -- '' for signing_keys
    -- device: {"device_display_name","keys","deleted"}; signing_keys: the
    -- m.signing_key_update content. Byte for byte.
    content     text NOT NULL,
    inserted_at timestamptz NOT NULL DEFAULT now()
);

-- The sender's side: per destination, the updates not yet acknowledged.
-- Only the newest of each (user, device), and of each user's signing keys,
-- is read to be sent; an older one stays until a newer one of its key is
-- acknowledged (it may be in a transaction already, and its acknowledgement
-- moves the user's prev_id chain).
CREATE TABLE sender_device_lists (
    destination text NOT NULL,
    position    bigint NOT NULL,
    user_id     text NOT NULL,
    kind        text NOT NULL,
    device_id   text NOT NULL,
    content     text NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination, position)
);
CREATE INDEX sender_device_lists_key ON sender_device_lists (destination, user_id, kind, device_id, position);

-- Per (destination, user): the stream_id of the last m.device_list_update
-- the destination accepted (the next one's prev_id; 0: none, prev_id []),
-- and the highest position it acknowledged (a replayed record at or below it
-- is not stored again).
CREATE TABLE sender_device_list_chain (
    destination    text NOT NULL,
    user_id        text NOT NULL,
    last_stream_id bigint NOT NULL DEFAULT 0,
    acked          bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (destination, user_id)
);

-- When a destination unreachable for over a day last had its pending updates
-- cut to one per user (and its chains restarted).
ALTER TABLE sender_destinations ADD COLUMN device_lists_collapsed_at bigint;
