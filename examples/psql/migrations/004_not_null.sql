-- Make the new column NOT NULL without a long lock. In autocommit mode the
-- call runs the steps now and raises if a row is NULL (23502, with the count).
SELECT zdm.validate_not_null('orders', 'email');
