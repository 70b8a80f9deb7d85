package cli

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// labelsValue is a repeatable --label KEY=VALUE flag. With removals (vm
// set), "--label KEY-" removes KEY instead. The daemon checks keys and
// values; the flag only needs the shape.
type labelsValue struct {
	set       map[string]string
	remove    []string
	removable bool
}

func (l *labelsValue) String() string { return labelString(l.set) }

func (l *labelsValue) Type() string { return "key=value" }

func (l *labelsValue) Set(s string) error {
	if k, ok := strings.CutSuffix(s, "-"); ok && l.removable && !strings.Contains(s, "=") {
		l.remove = append(l.remove, k)
		return nil
	}
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		if l.removable {
			return fmt.Errorf("%q: want KEY=VALUE (or KEY- to remove a label)", s)
		}
		return fmt.Errorf("%q: want KEY=VALUE", s)
	}
	if l.set == nil {
		l.set = map[string]string{}
	}
	l.set[k] = v
	return nil
}

// labelString is labels as "k=v,k2=v2", sorted by key.
func labelString(labels map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}
