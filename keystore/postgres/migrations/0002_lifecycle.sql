-- Schema version 2 of the zonekey PostgreSQL keystore: pending DEK rows,
-- shredded DEK ids, tombstones and key epochs.
--
-- A DEK moved in from another zone is pending until a process of its zone
-- adopts it: it is wrapped by the zone's KEK at the custodian (kek_version)
-- instead of by a zone key (zone_key_version 0). Every row has exactly one
-- of the two. The constraint is NOT VALID so that the migration never fails
-- on rows stored before it; every row written from now on is checked.

ALTER TABLE {{table "deks"}}
	ADD COLUMN kek_version int8 NOT NULL DEFAULT 0 CHECK (kek_version BETWEEN 0 AND 4294967295);

ALTER TABLE {{table "deks"}}
	ADD CONSTRAINT {{name "deks_wrap_check"}} CHECK ((zone_key_version = 0) <> (kek_version = 0)) NOT VALID;

-- The id of every shredded DEK, and the subject whose tombstone tells why.
CREATE TABLE {{table "shredded_deks"}} (
	id      bytea NOT NULL CHECK (length(id) = 16),
	zone    bytea NOT NULL,
	subject bytea NOT NULL,
	CONSTRAINT {{name "shredded_deks_pkey"}} PRIMARY KEY (id)
);

COMMENT ON TABLE {{table "shredded_deks"}} IS
	'zonekey: ids of shredded DEKs (no key material), to tell a shredded key from an unknown one';

-- Why a subject's DEKs left a zone: kind 1 shredded, 2 moved (to_zone), 3
-- the zone shredded (subject '').
CREATE TABLE {{table "tombstones"}} (
	zone       bytea       NOT NULL,
	subject    bytea       NOT NULL,
	kind       int2        NOT NULL CHECK (kind BETWEEN 1 AND 3),
	to_zone    bytea       NOT NULL,
	generation int8        NOT NULL CHECK (generation BETWEEN 0 AND 4294967295),
	created    timestamptz NOT NULL,
	CONSTRAINT {{name "tombstones_pkey"}} PRIMARY KEY (zone, subject)
);

COMMENT ON TABLE {{table "tombstones"}} IS
	'zonekey: subjects whose DEKs were shredded or moved, and shredded zones (no key material)';

-- Key epochs; a NULL time is the zero time (finished is NULL while the
-- epoch runs).
CREATE TABLE {{table "epochs"}} (
	zone             bytea       NOT NULL,
	number           int8        NOT NULL CHECK (number BETWEEN 1 AND 4294967295),
	kek_version      int8        NOT NULL CHECK (kek_version BETWEEN 0 AND 4294967295),
	zone_key_version int8        NOT NULL CHECK (zone_key_version BETWEEN 0 AND 4294967295),
	owner            bytea       NOT NULL,
	lease            timestamptz,
	started          timestamptz,
	finished         timestamptz,
	CONSTRAINT {{name "epochs_pkey"}} PRIMARY KEY (zone, number)
);

COMMENT ON TABLE {{table "epochs"}} IS
	'zonekey: key epochs of each zone (no key material)';
