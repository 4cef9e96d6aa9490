//go:build !race

package fieldcrypt_test

const raceEnabled = false
