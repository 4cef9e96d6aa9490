package gcpkms

import "google.golang.org/api/option"

// SetURLClientOptions makes custodians opened by URL use opts, until the
// returned function restores the default.
func SetURLClientOptions(opts []option.ClientOption) (restore func()) {
	old := urlClientOptions
	urlClientOptions = opts
	return func() { urlClientOptions = old }
}
