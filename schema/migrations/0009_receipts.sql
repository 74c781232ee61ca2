-- Read receipts (m.read) of local users, written by the producer library
-- (producers/outbox.PutReceipts) in the caller's transaction and published by
-- the relay to <prefix>.receipts (keyed by room_id). Private receipts
-- (m.read.private) are never written: they never leave the homeserver.
CREATE TABLE receipts_stream (
    stream_id   bigint PRIMARY KEY DEFAULT fedpipe_next_stream_ordering(),
    room_id     text NOT NULL,
    user_id     text NOT NULL,
    event_ids   text[] NOT NULL,
    thread_id   text NOT NULL DEFAULT '',
    ts          bigint NOT NULL,
    inserted_at timestamptz NOT NULL DEFAULT now()
);
