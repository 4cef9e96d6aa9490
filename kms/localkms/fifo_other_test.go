//go:build !unix

package localkms_test

import "errors"

func mkfifo(string) error { return errors.New("not supported") }
