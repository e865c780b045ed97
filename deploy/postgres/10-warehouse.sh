#!/usr/bin/env bash
# Run by the postgres image once, when its volume is first initialised
# (/docker-entrypoint-initdb.d): the CLV warehouse, a second database "warehouse" in the same
# server, owned by the role "clv", with the two tables the postgres source reads
# (sql/transactions.sql, sql/contacts.sql; SPEC.md "Data in"). Load your data into them,
# or simulated data: docker compose --profile demo run --rm seed-warehouse.
set -euo pipefail
: "${CLV_WAREHOUSE_PASSWORD:?CLV_WAREHOUSE_PASSWORD is not set (.env)}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname "${POSTGRES_DB}" \
    --set=password="${CLV_WAREHOUSE_PASSWORD}" <<'SQL'
CREATE ROLE clv LOGIN PASSWORD :'password';
CREATE DATABASE warehouse OWNER clv;
SQL

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname warehouse <<'SQL'
SET ROLE clv;

-- One row per order. order_ts is text, as an ingestion tool loads it: the pipeline parses
-- it and quarantines what does not parse (SPEC "Data in"); a timestamp column works too.
CREATE TABLE transactions (
    account_id  text NOT NULL,
    order_id    text,
    customer_id text,
    order_ts    text,
    amount      double precision,
    status      text,
    currency    text,
    ingested_at timestamp
);
CREATE INDEX transactions_account_id ON transactions (account_id);

-- One row per customer (and contact); merged_into/merged_at record contact merges.
CREATE TABLE contacts (
    account_id   text NOT NULL,
    customer_id  text,
    contact_id   text,
    email        text,
    email_opt_in boolean,
    merged_into  text,
    merged_at    timestamp
);
CREATE INDEX contacts_account_id ON contacts (account_id);
SQL
