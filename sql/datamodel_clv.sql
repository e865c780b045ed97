-- The Datamodel table (SPEC "Data out"): one row per buyer of the history window.
-- Load a delivered file with:  \copy datamodel_clv FROM 'clv_datamodel_<account>_<yyyymmdd>.csv' CSV HEADER
-- The same shape serves as an SFMC Data Extension (CustomerId as primary key).
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
    "EMAIL_COMMUNICATIONS" boolean
);
