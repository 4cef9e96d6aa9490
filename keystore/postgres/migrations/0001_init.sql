-- Schema version 1 of the zonekey PostgreSQL keystore: zone keys and DEKs.
--
-- Zones, subjects and zone-key ids are arbitrary byte strings, kept as bytea
-- and compared byte for byte. Versions and generations are unsigned 32-bit
-- numbers, kept in int8 with range checks. The rows hold wrapped keys only.

CREATE TABLE {{table "zone_keys"}} (
	zone        bytea       NOT NULL,
	version     int8        NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
	id          bytea       NOT NULL,
	wrapped     bytea       NOT NULL,
	kek_version int8        NOT NULL CHECK (kek_version BETWEEN 0 AND 4294967295),
	created     timestamptz NOT NULL,
	CONSTRAINT {{name "zone_keys_pkey"}} PRIMARY KEY (zone, version),
	CONSTRAINT {{name "zone_keys_id_key"}} UNIQUE (id)
);

COMMENT ON TABLE {{table "zone_keys"}} IS
	'zonekey: zone keys, each wrapped by its zone''s KEK at the custodian';

CREATE TABLE {{table "deks"}} (
	id               bytea       NOT NULL CHECK (length(id) = 16),
	zone             bytea       NOT NULL,
	subject          bytea       NOT NULL,
	generation       int8        NOT NULL CHECK (generation BETWEEN 1 AND 4294967295),
	zone_key_version int8        NOT NULL CHECK (zone_key_version BETWEEN 0 AND 4294967295),
	wrapped          bytea       NOT NULL,
	created          timestamptz NOT NULL,
	CONSTRAINT {{name "deks_pkey"}} PRIMARY KEY (id),
	CONSTRAINT {{name "deks_subject_key"}} UNIQUE (zone, subject, generation)
);

COMMENT ON TABLE {{table "deks"}} IS
	'zonekey: data keys, each wrapped by a version of its zone''s key; deleting a subject''s rows shreds its data';
