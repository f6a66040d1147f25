-- Deploy zdm_example:email_not_null
-- No BEGIN/COMMIT on purpose: in autocommit zdm runs its steps now, each its own
-- transaction (ADD CHECK NOT VALID, VALIDATE under SHARE UPDATE EXCLUSIVE, SET
-- NOT NULL), and raises 23502 with the count if a row is NULL — so a violation
-- fails this deploy instead of surfacing later in zdm.status.
SELECT zdm.validate_not_null('orders', 'email');
