-- What each allowance (a grant, or a budget's period) has used, settled when requests end.
CREATE TABLE cp_allowance_use (
    allowance TEXT   PRIMARY KEY,
    used      BIGINT NOT NULL
);
-- What requests in flight hold against allowances: given back when they settle, or when their
-- lease runs out (a replica killed mid-request stops renewing its leases).
CREATE TABLE cp_reservations (
    id         TEXT   NOT NULL,
    allowance  TEXT   NOT NULL,
    amount     BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (id, allowance)
);
CREATE INDEX cp_reservations_by_allowance ON cp_reservations (allowance, expires_ms);
