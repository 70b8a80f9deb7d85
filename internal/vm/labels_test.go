package vm

import (
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func TestLabelChecks(t *testing.T) {
	for _, tc := range []struct {
		labels map[string]string
		want   string
	}{
		{map[string]string{"team": "web", "app.kubernetes.io/name": "api", "a": ""}, ""},
		{map[string]string{"Team": "x"}, `label key "Team": only lowercase letters`},
		{map[string]string{"-x": "y"}, `label key "-x": must start and end with a letter or digit`},
		{map[string]string{"": "y"}, `label key "": must be 1-63 characters`},
		{map[string]string{strings.Repeat("k", 64): "y"}, "must be 1-63 characters"},
		{map[string]string{"k": strings.Repeat("v", 256)}, "label k: the value is 256 characters, more than 255"},
		{map[string]string{"k": "a\x1b[31m"}, "label k: the value holds a control character"},
	} {
		err := checkLabels(tc.labels)
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.labels, err, tc.want)
		}
	}
	many := map[string]string{}
	for i := 0; i < 33; i++ {
		many[string(rune('a'+i%26))+strings.Repeat("x", i/26)] = "v"
	}
	if err := checkLabels(many); err == nil || !strings.Contains(err.Error(), "33 labels, more than 32") {
		t.Errorf("33 labels: %v", err)
	}
	got, err := withLabels(map[string]string{"a": "1", "b": "2"}, map[string]string{"c": "3", "a": "9"}, []string{"b", "absent"})
	if err != nil || len(got) != 2 || got["a"] != "9" || got["c"] != "3" {
		t.Errorf("withLabels: %v %v", got, err)
	}
	if got, err := withLabels(map[string]string{"a": "1"}, nil, []string{"a"}); err != nil || got != nil {
		t.Errorf("removing the last label: %v %v", got, err)
	}
}

func TestListFilters(t *testing.T) {
	web := api.VM{Name: "w", State: api.StateRunning, Image: "tiny", Labels: map[string]string{"team": "web", "env": "dev"}}
	db := api.VM{Name: "d", State: api.StateStopped, Image: "debian-bookworm", Labels: map[string]string{"team": "data"}}
	bare := api.VM{Name: "b", State: api.StateRunning, Image: "tiny"}
	for _, tc := range []struct {
		filters []string
		want    string
	}{
		{nil, "w,d,b"},
		{[]string{"label=team=web"}, "w"},
		{[]string{"label=team"}, "w,d"},
		{[]string{"label=team", "state=running"}, "w"},
		{[]string{"state=running", "image=tiny"}, "w,b"},
		{[]string{"label=env=prod"}, ""},
	} {
		fs, err := parseFilters(tc.filters)
		if err != nil {
			t.Fatalf("%v: %v", tc.filters, err)
		}
		var got []string
		for _, v := range []api.VM{web, db, bare} {
			if matches(v, fs) {
				got = append(got, v.Name)
			}
		}
		if strings.Join(got, ",") != tc.want {
			t.Errorf("%v: %v, want %s", tc.filters, got, tc.want)
		}
	}
	for _, tc := range []struct{ f, want string }{
		{"state=sleeping", `filter "state=sleeping": state must be one of created, starting, running`},
		{"color=red", `filter "color=red": unknown field "color" (label, state, image)`},
		{"label", `filter "label": want label=KEY[=VALUE], state=STATE or image=NAME`},
		{"label=BAD=x", `label key "BAD"`},
	} {
		if _, err := parseFilters([]string{tc.f}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.f, err, tc.want)
		}
	}
}
