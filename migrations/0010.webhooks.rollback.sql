DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
DROP TABLE webhooks;
DROP INDEX tasks_due_reminders_idx;
ALTER TABLE tasks DROP COLUMN reminded_at;
