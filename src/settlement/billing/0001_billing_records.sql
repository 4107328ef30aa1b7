-- gyro billing records, version 1. Applied by gyro in one transaction, inside the schema named by
-- settlement.postgres.schema (search_path). Money is in minor units of the invoice currency
-- (bigint, exact); quantities and rates are numeric (exact). Never edited once released: a
-- change is a new file with the next number.

CREATE TABLE invoices (
    number               text PRIMARY KEY,                 -- BT-1, gapless per series
    series               text NOT NULL,
    settlement_key       text NOT NULL UNIQUE,             -- one invoice per settled session/event
    issued_at            timestamptz NOT NULL,
    issue_date           date NOT NULL,                    -- BT-2
    due_date             date NOT NULL,                    -- BT-9
    currency             char(3) NOT NULL,                 -- BT-5
    customer_id          text NOT NULL,                    -- BT-46
    customer_name        text NOT NULL,
    customer_email       text NOT NULL,
    price_basis          text NOT NULL CHECK (price_basis IN ('gross', 'net')),
    line_extension_minor bigint NOT NULL,                  -- BT-106
    tax_exclusive_minor  bigint NOT NULL,                  -- BT-109
    tax_minor            bigint NOT NULL,                  -- BT-110
    tax_inclusive_minor  bigint NOT NULL,                  -- BT-112
    rounding_minor       bigint NOT NULL,                  -- BT-114
    paid_minor           bigint NOT NULL,                  -- BT-113
    payable_minor        bigint NOT NULL,                  -- BT-115
    payment_means_code   text NOT NULL,                    -- BT-81
    payment_means        text NOT NULL,                    -- masked: brand + last four, IBAN masked, wallet
    status               text NOT NULL CHECK (status IN ('issued', 'paid', 'payment_failed', 'dead_letter')),
    ubl                  text NOT NULL,                    -- the UBL 2.1 document as sent
    document             jsonb NOT NULL,                   -- the JSON rendering
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (tax_inclusive_minor = tax_exclusive_minor + tax_minor),            -- BR-CO-15
    CHECK (payable_minor = tax_inclusive_minor - paid_minor + rounding_minor) -- BR-CO-16
);
CREATE INDEX invoices_customer ON invoices (customer_id, issue_date);
CREATE INDEX invoices_status ON invoices (status) WHERE status <> 'paid';

CREATE TABLE invoice_lines (
    invoice_number text NOT NULL REFERENCES invoices (number),
    line_id        integer NOT NULL,                       -- BT-126
    name           text NOT NULL,                          -- BT-153
    rating_group   bigint,
    quantity       numeric NOT NULL,                       -- BT-129
    unit_code      text NOT NULL,                          -- BT-130 (UN/ECE Rec 20)
    net_minor      bigint NOT NULL,                        -- BT-131
    debited_minor  bigint NOT NULL,
    vat_category   text NOT NULL,                          -- BT-151
    vat_rate       numeric NOT NULL,                       -- BT-152
    PRIMARY KEY (invoice_number, line_id)
);

-- What was used and debited, one row per rated service of a settled session or event.
CREATE TABLE usage_records (
    settlement_key text NOT NULL,
    line_id        integer NOT NULL,
    invoice_number text NOT NULL REFERENCES invoices (number),
    customer_id    text NOT NULL,
    service        text NOT NULL,
    rating_group   bigint,
    quantity       numeric NOT NULL,
    unit_code      text NOT NULL,
    debited_minor  bigint NOT NULL,
    currency       char(3) NOT NULL,
    settled_at     timestamptz NOT NULL,
    PRIMARY KEY (settlement_key, line_id)
);
CREATE INDEX usage_records_customer ON usage_records (customer_id, settled_at);

CREATE TABLE payments (
    invoice_number  text NOT NULL REFERENCES invoices (number),
    attempt         integer NOT NULL,
    idempotency_key text NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('succeeded', 'pending', 'declined', 'failed', 'unknown', 'wallet')),
    payment_id      text,
    amount_minor    bigint NOT NULL,
    currency        char(3) NOT NULL,
    detail          text,
    at              timestamptz NOT NULL,
    PRIMARY KEY (invoice_number, attempt)
);
-- At most one successful charge per invoice, enforced by the database as well as by gyro.
CREATE UNIQUE INDEX payments_one_success ON payments (invoice_number) WHERE outcome IN ('succeeded', 'wallet');
