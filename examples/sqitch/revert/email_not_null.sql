-- Revert zdm_example:email_not_null: dropping NOT NULL is a brief catalog change.
BEGIN;
ALTER TABLE orders ALTER COLUMN email DROP NOT NULL;
COMMIT;
