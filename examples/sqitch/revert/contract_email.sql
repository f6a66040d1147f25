-- Revert zdm_example:contract_email
-- The old column is gone: there is nothing to restore. Undo by deploying a new
-- rename (zdm.expand_rename('orders', 'email', 'customer_email')) instead.
DO $$ BEGIN
  RAISE EXCEPTION 'contract_email cannot be reverted: orders.customer_email was dropped'
    USING ERRCODE = 'feature_not_supported',
          HINT = 'Deploy a new change that renames orders.email back with zdm.expand_rename.';
END $$;
