-- Release 1 (expand): add orders.email beside orders.customer_email, kept in
-- sync by zdm's trigger. One statement: fine with `psql -1` (the backfill
-- starts when this transaction commits). Re-running it returns the same id.
SELECT zdm.expand_rename('orders', 'customer_email', 'email');
