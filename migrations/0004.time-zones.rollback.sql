DROP FUNCTION all_day_due(date, text);
ALTER TABLE tasks
    DROP CONSTRAINT tasks_due_on_has_due_date,
    DROP COLUMN due_on;
ALTER TABLE users DROP COLUMN time_zone;
