-- Revert zdm_example:wait_email: waiting changed nothing.
SELECT 1;
