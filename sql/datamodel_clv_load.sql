-- The Datamodel table as the PostgreSQL delivery loads it (destination `type: postgres`,
-- clv_jobs/delivery/postgres.py): the 25 columns of datamodel_clv.sql, same names, order
-- and types, plus the two that let one warehouse table hold every account:
--   account_id  the account the rows belong to (the manifest's "account");
--   as_of       the as-of date of the run they come from (the manifest's "as_of").
-- One row per account and CustomerId (the primary key, which also serves the DELETE).
--
-- The delivery creates the table when it is missing, under the destination's `table`
-- (default datamodel_clv, `schema.table` allowed); a DBA may create it beforehand from
-- this file and grant the delivery's login SELECT, INSERT, DELETE on it only. A table made
-- from datamodel_clv.sql (no account_id, no as_of) is refused with a clear error.
--
-- Each delivery replaces one account's rows in ONE transaction, so readers see either
-- the previous rows or the new ones, never a mix, and a failure leaves the previous rows:
--   BEGIN;
--   SELECT pg_advisory_xact_lock(...);  -- one delivery per table and account at a time
--   DELETE FROM datamodel_clv WHERE account_id = '<account>';
--   COPY <temp table> (the file's columns) FROM STDIN (FORMAT csv, HEADER true);
--   INSERT INTO datamodel_clv (25 columns, account_id, as_of)
--     SELECT 25 columns, '<account>', '<as_of>' FROM <temp table>;
--   -- the inserted row count must equal the manifest's "rows", else ROLLBACK
--   COMMIT;
CREATE TABLE IF NOT EXISTS datamodel_clv (
    "CustomerId"           varchar(255) NOT NULL,
    "Email"                varchar(255),
    "ContactId"            varchar(255),
    "LTV_VALUE"            double precision,
    "REC_VALUE"            double precision,
    "FREQ_VALUE"           int,
    "MON_VALUE"            double precision,
    "CLV_SEGMENT"          varchar(255),
    "ID_CLV_SEGMENT"       varchar(255),
    "CLV_SCORE"            varchar(255),
    "ID_CLV_SCORE"         varchar(255),
    "DAYS_BTW_PURCHASE"    double precision,
    "TICKET_AVG"           double precision,
    "FIRST_TICKET_DATE"    timestamp,
    "LAST_TICKET_DATE"     timestamp,
    "LST90DAYS_REVENUE"    double precision,
    "LST180DAYS_REVENUE"   double precision,
    "LST360DAYS_REVENUE"   double precision,
    "LST90DAYS_FREQ"       int,
    "LST180DAYS_FREQ"      int,
    "LST360DAYS_FREQ"      int,
    "CG_SEGMENT"           varchar(255),
    "CLV_EVOLUTION"        varchar(255),
    "DIFF_TBP_RECENCY"     double precision,
    "EMAIL_COMMUNICATIONS" boolean,
    account_id             varchar(255) NOT NULL,
    as_of                  date NOT NULL,
    PRIMARY KEY (account_id, "CustomerId")
);
