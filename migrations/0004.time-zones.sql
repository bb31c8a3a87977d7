-- Time zones: each user's IANA zone, and all-day tasks (a due date without a time).
-- Zone arithmetic happens here in PostgreSQL (AT TIME ZONE on local timestamps is DST-correct);
-- stored instants stay timestamptz, so listing, sorting and filtering are unchanged.

-- The check makes PostgreSQL itself parse the name: the service checks names against the IANA
-- list it ships (tzdata), and a server whose own time zone data lacks one refuses it here
-- rather than failing later, in the middle of a task write.
ALTER TABLE users
    ADD COLUMN time_zone text NOT NULL DEFAULT 'UTC'
        CONSTRAINT users_time_zone_known CHECK ((timestamp '2000-01-01' AT TIME ZONE time_zone) IS NOT NULL);

-- An all-day task has due_on, its date as the user wrote it, and due_date, the instant its day
-- ends in the user's zone (the next midnight there), by which it sorts, filters and becomes
-- overdue like any other task. Changing the zone moves due_date and keeps due_on.
ALTER TABLE tasks
    ADD COLUMN due_on date,
    ADD CONSTRAINT tasks_due_on_has_due_date CHECK (due_on IS NULL OR due_date IS NOT NULL);

-- When an all-day task on `day` is due for a user in `zone`: the end of that day there.
CREATE FUNCTION all_day_due(day date, zone text) RETURNS timestamptz
    LANGUAGE sql STABLE PARALLEL SAFE STRICT
    RETURN (day + 1)::timestamp AT TIME ZONE zone;
