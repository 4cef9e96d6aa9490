package fieldcrypt

import (
	"reflect"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// leafPaths lists the paths bound by the leaves of t's plan, and the number
// of struct nodes the walker visits, following each node once.
func leafPaths(t *testing.T, typ reflect.Type) (paths []string, structs int) {
	t.Helper()
	p := planFor(typ)
	require.NoError(t, p.err)
	seen := map[*node]bool{}
	var walk func(n *node)
	walk = func(n *node) {
		if seen[n] {
			return
		}
		seen[n] = true
		switch n.kind {
		case kString, kBytes:
			paths = append(paths, n.path)
		case kStruct:
			structs++
			for _, f := range n.fields {
				walk(f.node)
			}
		default:
			walk(n.elem)
		}
	}
	walk(p.root)
	slices.Sort(paths)
	return paths, structs
}

type embedded struct {
	Email string `zonekey:"encrypt"`
}

type Deep struct {
	Street string
	Lines  []string
}

type pathsRecord struct {
	ID     string `zonekey:"subject"`
	Region string `zonekey:"zone"`
	Email  string `zonekey:"encrypt"`
	embedded
	*Deep   `zonekey:"encrypt"`
	Phones  []string                        `zonekey:"encrypt"`
	ByKey   map[string][]string             `zonekey:"encrypt"`
	Items   []struct{ Secret, Note string } `zonekey:"encrypt"`
	Untouch struct {
		A, B string
		N    int
	}
	Nested struct {
		In struct {
			S []byte `zonekey:"encrypt"`
		}
	}
}

type tree struct {
	Label string `zonekey:"encrypt"`
	Kids  []*tree
	Next  *tree
	Box   *tree `zonekey:"encrypt"`
}

func TestPlanPaths(t *testing.T) {
	paths, structs := leafPaths(t, reflect.TypeFor[pathsRecord]())
	require.Equal(t, []string{
		"ByKey{}[]",
		"Deep.Lines[]",
		"Deep.Street",
		"Email",
		"Items[].Note",
		"Items[].Secret",
		"Nested.In.S",
		"Phones[]",
		"embedded.Email",
	}, paths)
	// Untouch holds nothing to seal and is pruned: the root, embedded,
	// Deep, Items[], Nested and Nested.In remain.
	require.Equal(t, 6, structs)

	p := planFor(reflect.TypeFor[pathsRecord]())
	require.Equal(t, []int{0}, p.subjectIdx)
	require.Equal(t, []int{1}, p.zoneIdx)
	require.Same(t, p, planFor(reflect.TypeFor[pathsRecord]()), "plans are cached")

	// A recursive type: the plan is finite and inner levels reuse the
	// outer paths; the encrypted subtree has paths of its own.
	paths, _ = leafPaths(t, reflect.TypeFor[tree]())
	require.Equal(t, []string{"Box.Label", "Label"}, paths)
}

func TestPlanEmbeddedZone(t *testing.T) {
	type base struct {
		ID     string `zonekey:"subject"`
		Region string `zonekey:"zone"`
	}
	type rec struct {
		N int
		base
		Body string `zonekey:"encrypt"`
	}
	p := planFor(reflect.TypeFor[rec]())
	require.NoError(t, p.err)
	require.Equal(t, []int{1, 0}, p.subjectIdx)
	require.Equal(t, []int{1, 1}, p.zoneIdx)
}
