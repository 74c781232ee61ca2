-- To-device messages (m.direct_to_device), durable end to end.
--
-- device_federation_outbox is the homeserver's side, written by the producer
-- library (producers/outbox.SendToDevice) in the caller's transaction: one row
-- per destination and EDU, a message's recipients split so that no EDU passes
-- 64 KiB. The relay publishes it to <prefix>.todevice in stream order; rows it
-- has published (relay_positions 'todevice') may be deleted by the operator.
CREATE TABLE device_federation_outbox (
    stream_id   bigint PRIMARY KEY DEFAULT fedpipe_next_stream_ordering(),
    destination text NOT NULL,
    message_id  text NOT NULL,
    -- The m.direct_to_device EDU's content, byte for byte: never re-encoded.
    content     text NOT NULL,
    inserted_at timestamptz NOT NULL DEFAULT now()
);

-- The sender's side: what a destination has not acknowledged yet. A row is
-- written when the sender takes the outbound record (the record is committed
-- after it), read in position order when the destination is sending, and
-- deleted once a transaction carrying it was accepted (or refused as
-- malformed). It outlives backoff, catch-up, restarts and rebalances.
CREATE TABLE sender_to_device (
    destination text NOT NULL,
    position    bigint NOT NULL,
    message_id  text NOT NULL,
    content     text NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination, position)
);

-- The highest to-device position a destination acknowledged: a replayed
-- outbound record at or below it is not stored (nor sent) again.
ALTER TABLE sender_destinations ADD COLUMN to_device_acked bigint NOT NULL DEFAULT 0;
