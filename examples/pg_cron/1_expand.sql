-- Release 1 (expand), run by hand or by your migration tool. background =>
-- false: no zdm worker starts the backfill; the scheduled job below runs it.
SELECT zdm.expand_rename('orders', 'customer_email', 'email', background => false);
