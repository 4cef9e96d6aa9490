// Package zonekey encrypts the sensitive fields of Go structs so that a
// record can be read only where its custody zone allows: field-level
// envelope encryption with regional key custody.
//
// # Use
//
// Mark fields with struct tags, open a Client, and call Encrypt before
// storing a record and Decrypt after loading it:
//
//	type User struct {
//		ID     string `zonekey:"subject"` // whose data: selects the subject's DEK
//		Region string `zonekey:"zone"`    // custody zone of this record ("eu", "us")
//		Phone  string `zonekey:"encrypt"` // sealed in place
//		Notes  []byte `zonekey:"encrypt"`
//		Plan   string                     // untouched
//	}
//
//	c, err := zonekey.Open(ctx, zonekey.Config{
//		Dir:   "/var/lib/myapp/zonekey",
//		Zones: zonekey.LocalZones("/var/lib/myapp/zonekey", "eu"), // development KEKs
//	})
//	err = c.Encrypt(ctx, &u) // Phone and Notes now hold "zk1." envelopes
//	err = c.Decrypt(ctx, &u)
//
// Encrypt and Decrypt are all-or-nothing: on error the struct is unchanged.
// Errors wrap the sentinels below; test them with errors.Is and use
// errors.As with *fieldcrypt.FieldError to learn the field path and zone.
//
// # Keys
//
// Each subject (data subject: a user, a customer) of each zone has its own
// data key (DEK). DEKs are stored in the keystore wrapped by their zone's
// zone key; the zone key is stored wrapped by the zone's key-encryption key
// (KEK), which never leaves the zone's custodian (a local key file for
// development; Vault Transit or Cloud KMS in production). A process asks the
// custodian once per zone key and cache lifetime, not once per record.
//
// Shredding a subject's DEK makes every copy of its data unreadable; moving
// it under another zone's key moves its custody without touching the data.
//
// # What not to do
//
// Do not keep a plaintext copy of an encrypted field "for search": give it a
// blind index (`zonekey:"index=Email"`, looked up with Client.IndexTerms) or,
// if it must be matched exactly and stay reversible, encrypt it
// deterministically (`zonekey:"encrypt,deterministic"`); SECURITY.md says
// what each reveals. Do not share
// one subject id between people: the subject is the unit of erasure. Do not
// use local KEK files in production: anyone who can read the file and the
// keystore can read the data.
//
// The packages beneath this one can be used directly: fieldcrypt (struct
// walking), envelope (the wire format), keystore (the keyring), kms (the
// custodians). See ARCHITECTURE.md.
package zonekey
