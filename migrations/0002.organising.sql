-- Organising tasks: priority, tags, due date, reminder, repeat rule, completion time; and the
-- indexes that serve the default listing, the due-date listings, priority, tags and search.

-- Trigram indexes make case-insensitive substring search (ILIKE '%...%') use an index.
-- A trusted extension since PostgreSQL 13: a database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

ALTER TABLE tasks
    ADD COLUMN priority            smallint    NOT NULL DEFAULT 1 CHECK (priority BETWEEN 0 AND 2),
    ADD COLUMN tags                text[]      NOT NULL DEFAULT '{}' CHECK (cardinality(tags) <= 20),
    ADD COLUMN due_date            timestamptz,
    ADD COLUMN remind_at           timestamptz,
    ADD COLUMN recurrence_every    text        CHECK (recurrence_every IN ('day', 'week', 'month', 'year')),
    ADD COLUMN recurrence_interval smallint    CHECK (recurrence_interval BETWEEN 1 AND 365),
    ADD COLUMN completed_at        timestamptz,
    -- The occurrence that completing this repeating task created; it is created only once.
    ADD COLUMN next_task_id        bigint,
    ADD CONSTRAINT tasks_recurrence_whole CHECK ((recurrence_every IS NULL) = (recurrence_interval IS NULL));

-- Tags keep the spelling they were given and compare case-insensitively through this.
CREATE FUNCTION task_tag_keys(tags text[]) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    RETURN ARRAY(SELECT lower(tag) FROM unnest(tags) AS tag);

-- priority 0 low, 1 medium, 2 high; ties broken by id, as in every listing.
CREATE INDEX tasks_user_priority_idx ON tasks (user_id, priority, id);
-- Due-date listings put tasks without one last in both directions, hence two sort keys.
CREATE INDEX tasks_user_due_asc_idx ON tasks (user_id, coalesce(due_date, 'infinity'), id);
CREATE INDEX tasks_user_due_desc_idx ON tasks (user_id, coalesce(due_date, '-infinity'), id);
CREATE INDEX tasks_tag_keys_idx ON tasks USING gin (task_tag_keys(tags));
CREATE INDEX tasks_search_idx ON tasks USING gin ((title || ' ' || coalesce(description, '')) gin_trgm_ops);
