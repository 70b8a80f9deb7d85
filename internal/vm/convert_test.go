package vm

import (
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/store"
)

// fill sets every field of the struct v points to (recursively: pointers
// are allocated, slices get two elements) to a non-zero value distinct from
// the others, so a field a conversion forgets shows up as a difference.
func fill(t *testing.T, v reflect.Value, n *int) {
	t.Helper()
	*n++
	switch v.Kind() {
	case reflect.String:
		v.SetString(fmt.Sprintf("v%d", *n))
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(*n))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(*n))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(t, v.Elem(), n)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		for i := 0; i < v.Len(); i++ {
			fill(t, v.Index(i), n)
		}
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
		for i := 0; i < 2; i++ {
			k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
			fill(t, k, n)
			fill(t, e, n)
			v.SetMapIndex(k, e)
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if !v.Type().Field(i).IsExported() {
				t.Fatalf("%s.%s is unexported: the conversions cannot carry it", v.Type(), v.Type().Field(i).Name)
			}
			fill(t, v.Field(i), n)
		}
	default:
		t.Fatalf("fill: no rule for %s (%s): teach the test, and the conversions, about it", v.Type(), v.Kind())
	}
}

// TestRuntimeConversionsCarryEveryField: a fully populated runtime survives
// store → api → store and api → store → api unchanged. A field added to
// either type but not to runtimeToAPI/runtimeFromAPI fails here.
func TestRuntimeConversionsCarryEveryField(t *testing.T) {
	n := 0
	var rec store.RuntimeRecord
	fill(t, reflect.ValueOf(&rec).Elem(), &n)
	if len(rec.Labels) != 2 {
		t.Fatalf("labels not filled: %v", rec.Labels)
	}
	// The labels cross as api.VM.Labels (ToAPI), not in api.VMRuntime.
	rec.Labels = nil
	if back := runtimeFromAPI(runtimeToAPI(rec)); !reflect.DeepEqual(back, rec) {
		t.Fatalf("store → api → store lost something:\n got  %+v\n want %+v", back, rec)
	}
	var wire api.VMRuntime
	fill(t, reflect.ValueOf(&wire).Elem(), &n)
	if back := runtimeToAPI(runtimeFromAPI(wire)); !reflect.DeepEqual(back, wire) {
		t.Fatalf("api → store → api lost something:\n got  %+v\n want %+v", back, wire)
	}
	// Both types have the same fields: the conversions map them by name.
	if a, b := slices.DeleteFunc(fieldNames(reflect.TypeOf(rec)), func(f string) bool { return f == "Labels" }), fieldNames(reflect.TypeOf(wire)); !reflect.DeepEqual(a, b) {
		t.Fatalf("store.RuntimeRecord fields %v, api.VMRuntime fields %v", a, b)
	}
	if a, b := fieldNames(reflect.TypeOf(store.WorkspaceRecord{})), fieldNames(reflect.TypeOf(api.Workspace{})); !reflect.DeepEqual(a, b) {
		t.Fatalf("store.WorkspaceRecord fields %v, api.Workspace fields %v", a, b)
	}
	// The converted value does not share memory with its source.
	out := runtimeToAPI(rec)
	out.DiskParents[0] = "changed"
	out.Workspace.Mode = "changed"
	if rec.DiskParents[0] == "changed" || rec.Workspace.Mode == "changed" {
		t.Fatal("runtimeToAPI's result aliases the record")
	}
}

// TestRuntimeConversionsKeepNil: no workspace and no disk parents stay
// absent (omitted on the wire and in the store), not empty.
func TestRuntimeConversionsKeepNil(t *testing.T) {
	out := runtimeToAPI(store.RuntimeRecord{Tap: "t"})
	if out.Workspace != nil || out.DiskParents != nil || out.Tap != "t" {
		t.Fatalf("%+v", out)
	}
	back := runtimeFromAPI(api.VMRuntime{})
	if back.Workspace != nil || back.DiskParents != nil {
		t.Fatalf("%+v", back)
	}
}

func fieldNames(t reflect.Type) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		out = append(out, t.Field(i).Name)
	}
	return out
}
