-- The router's membership state (consumer group fedpipe-router). Only joins are
-- stored: a server is a destination of a room's events while one of its users is
-- joined; the target of a membership event comes from the event itself.

-- Per room, the last stream position whose membership change is stored. It is
-- updated in the same transaction as the change, so a replayed delta is
-- recognised and the stored state never moves backwards.
CREATE TABLE router_rooms (
    room_id       text PRIMARY KEY,
    last_position bigint NOT NULL
);

-- The users joined now: loaded when a router member first sees a room.
CREATE TABLE router_room_members (
    room_id    text NOT NULL,
    user_id    text NOT NULL,
    membership text NOT NULL DEFAULT 'join' CHECK (membership = 'join'),
    PRIMARY KEY (room_id, user_id)
);

-- Every change of a user's joined-ness, with its stream position: a replayed
-- event is routed with the joined users as of the position before it, rebuilt
-- from here, so replay sends it where it went the first time.
CREATE TABLE router_membership_changes (
    room_id  text NOT NULL,
    user_id  text NOT NULL,
    position bigint NOT NULL,
    joined   boolean NOT NULL,
    PRIMARY KEY (room_id, user_id, position)
);
