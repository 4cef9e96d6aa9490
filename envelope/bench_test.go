package envelope

import (
	"fmt"
	"strings"
	"testing"
)

var benchSizes = []int{16, 64, 256, 1024}

func BenchmarkSealString(b *testing.B) {
	key := newTestKey(b, 1)
	for _, n := range benchSizes {
		v := strings.Repeat("x", n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := key.SealString(v, bindEmail); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkOpenString(b *testing.B) {
	key := newTestKey(b, 1)
	for _, n := range benchSizes {
		text, err := key.SealString(strings.Repeat("x", n), bindEmail)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := key.OpenString(text, bindEmail); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
