package vm

import (
	"maps"
	"slices"
	"strings"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/errdefs"
)

// Label limits: a key is 1-63 of [a-z0-9._-] (and "/" for a prefix, as in
// "team/app"), starting and ending with a letter or digit; a value is at
// most 255 printable characters; a VM has at most 32 labels.
const (
	maxLabels     = 32
	maxLabelKey   = 63
	maxLabelValue = 255
)

func checkLabelKey(k string) error {
	if k == "" || len(k) > maxLabelKey {
		return errdefs.BadRequestf("label key %q: must be 1-%d characters", k, maxLabelKey)
	}
	for i, r := range k {
		alnum := r >= 'a' && r <= 'z' || r >= '0' && r <= '9'
		if !alnum && !strings.ContainsRune("._-/", r) {
			return errdefs.BadRequestf("label key %q: only lowercase letters, digits, '.', '_', '-' and '/'", k)
		}
		if !alnum && (i == 0 || i == len(k)-1) {
			return errdefs.BadRequestf("label key %q: must start and end with a letter or digit", k)
		}
	}
	return nil
}

func checkLabelValue(k, v string) error {
	if len(v) > maxLabelValue {
		return errdefs.BadRequestf("label %s: the value is %d characters, more than %d", k, len(v), maxLabelValue)
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return errdefs.BadRequestf("label %s: the value holds a control character", k)
		}
	}
	return nil
}

// checkLabels refuses a label set out of shape, naming the label.
func checkLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return errdefs.BadRequestf("%d labels, more than %d", len(labels), maxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if err := checkLabelKey(k); err != nil {
			return err
		}
		if err := checkLabelValue(k, labels[k]); err != nil {
			return err
		}
	}
	return nil
}

// withLabels applies set and remove to a VM's labels and returns the
// result (nil when none are left), checked.
func withLabels(cur, set map[string]string, remove []string) (map[string]string, error) {
	out := maps.Clone(cur)
	if out == nil {
		out = map[string]string{}
	}
	for _, k := range remove {
		if err := checkLabelKey(k); err != nil {
			return nil, err
		}
		delete(out, k)
	}
	maps.Copy(out, set)
	if err := checkLabels(out); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// filter is one vm.list filter.
type filter struct {
	field, key, value string
	hasValue          bool
}

// parseFilters reads "label=k=v", "label=k" (the label is set),
// "state=running" and "image=NAME".
func parseFilters(in []string) ([]filter, error) {
	var out []filter
	for _, f := range in {
		field, rest, ok := strings.Cut(f, "=")
		if !ok || rest == "" {
			return nil, errdefs.BadRequestf("filter %q: want label=KEY[=VALUE], state=STATE or image=NAME", f)
		}
		switch field {
		case "label":
			k, v, has := strings.Cut(rest, "=")
			if err := checkLabelKey(k); err != nil {
				return nil, err
			}
			out = append(out, filter{field: field, key: k, value: v, hasValue: has})
		case "state":
			if !slices.Contains(api.States, rest) {
				return nil, errdefs.BadRequestf("filter %q: state must be one of %s", f, strings.Join(api.States, ", "))
			}
			out = append(out, filter{field: field, value: rest})
		case "image":
			out = append(out, filter{field: field, value: rest})
		default:
			return nil, errdefs.BadRequestf("filter %q: unknown field %q (label, state, image)", f, field)
		}
	}
	return out, nil
}

// matches reports whether v passes every filter.
func matches(v api.VM, fs []filter) bool {
	for _, f := range fs {
		switch f.field {
		case "label":
			got, ok := v.Labels[f.key]
			if !ok || f.hasValue && got != f.value {
				return false
			}
		case "state":
			if v.State != f.value {
				return false
			}
		case "image":
			if v.Image != f.value {
				return false
			}
		}
	}
	return true
}
