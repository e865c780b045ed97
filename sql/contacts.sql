-- One account's contacts, read by clv_jobs' postgres source (SPEC.md "Data in").
--
-- Expected warehouse shape: a table `contacts` with one row per customer (and contact)
--   account_id, customer_id, contact_id, email, email_opt_in, merged_into, merged_at
-- (merged_into and merged_at may be selected as NULL when the table has none).
-- Any column type works: every value is read as text; email_opt_in is true for
-- true/t/yes/y/1 (any case), false otherwise.
--
-- Edit freely (schema-qualify the table, rename columns with AS, add filters), keeping:
--   * the output column names above;
--   * the account filter with the bind parameter written exactly as below (psycopg
--     style; the account id is bound client-side as a quoted literal); a literal
--     percent sign must then be doubled;
--   * one SELECT, no trailing statement: it runs as COPY (<this query>) TO STDOUT.
-- ORDER BY makes reruns identical: of several rows of one customer, the first not merged
-- away and with a contact id is kept.
SELECT account_id, customer_id, contact_id, email, email_opt_in, merged_into, merged_at
FROM contacts
WHERE account_id = %(account_id)s
ORDER BY customer_id, contact_id, email, merged_into, merged_at
