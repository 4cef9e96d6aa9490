package keystore

// DEKAD is the associated data of a wrapped DEK row, for tests that rewrap
// rows the way a zone-key rotation does.
var DEKAD = dekAD
