-- The sender updates a row of sender_destination_rooms per room of every
-- accepted transaction, and its destination's row in sender_destinations
-- (RecordSuccess). Room left in each page lets PostgreSQL update in place
-- (a HOT update: no new index entry, nothing for vacuum to clean from the
-- index), as no updated column is indexed. Pages written from now on keep it.
ALTER TABLE sender_destination_rooms SET (fillfactor = 70);
ALTER TABLE sender_destinations SET (fillfactor = 70);
