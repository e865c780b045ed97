-- One account's orders, read by clv_jobs' postgres source (SPEC.md "Data in").
--
-- Expected warehouse shape: a table `transactions` with one row per order
--   account_id, order_id, customer_id, order_ts, amount, status, currency, ingested_at
-- (status, currency and ingested_at may be selected as NULL when the table has none).
-- Any column type works: every value is read as text and validated by the pipeline, so
-- keep order_ts as loaded (text is fine) and a bad value is quarantined, not fatal.
-- Timestamps without a time zone are UTC; timestamptz values are read in UTC.
--
-- Edit freely (schema-qualify the table, rename columns with AS, add filters), keeping:
--   * the output column names above;
--   * the account filter with the bind parameter written exactly as below (psycopg
--     style; the account id is bound client-side as a quoted literal); a literal
--     percent sign must then be doubled;
--   * one SELECT, no trailing statement: it runs as COPY (<this query>) TO STDOUT.
-- ORDER BY makes reruns identical: the first of several rows with one order id is the
-- one kept, and "row N" in reports means the N-th row of this result.
SELECT account_id, order_id, customer_id, order_ts, amount, status, currency, ingested_at
FROM transactions
WHERE account_id = %(account_id)s
ORDER BY order_id, ingested_at, order_ts, customer_id, amount, status, currency
