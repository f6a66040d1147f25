-- Release 3 (contract), once no application version reads customer_email:
-- drops it under a brief lock. Re-running it is a NOTICE no-op.
SELECT zdm.contract('orders', 'email');
