package fcvmm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"

	oaerrors "github.com/go-openapi/errors"
	"github.com/go-openapi/strfmt"
)

// apiError is a 400 (or other) answer with Firecracker's fault message.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, a ...any) *apiError {
	return &apiError{status: 400, msg: fmt.Sprintf(format, a...)}
}

// deserializeError is Firecracker's RequestError::SerdeJson.
func deserializeError(detail string) *apiError {
	return badRequest("An error occurred when deserializing the json body of a request: %s.", detail)
}

// validatable is what go-swagger's generated models implement.
type validatable interface {
	Validate(strfmt.Registry) error
}

// jsonFields lists the JSON field names of a struct type, embedded structs
// included, in declaration order.
func jsonFields(t reflect.Type) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct && f.Tag.Get("json") == "" {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out = append(out, name)
	}
	return out
}

// decodeBody decodes a request body into dst (a pointer to a struct that
// embeds one of the SDK's generated models, or is one), the way Firecracker's
// serde structs with deny_unknown_fields do: a JSON object, no unknown field,
// the types right. Schema validation (required fields, enums, ranges) is the
// caller's, with validateModel. It returns the keys present, so callers can
// tell an absent field from a zero one.
func decodeBody(body []byte, dst any) (map[string]json.RawMessage, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, deserializeError(serdeMessage(err))
	}
	if raw == nil {
		return nil, deserializeError("invalid type: null, expected a struct")
	}
	fields := jsonFields(reflect.TypeOf(dst))
	known := map[string]bool{}
	for _, f := range fields {
		known[f] = true
	}
	var keys []string
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !known[k] {
			return nil, deserializeError(fmt.Sprintf("unknown field `%s`, %s", k, serdeExpected(fields)))
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return nil, deserializeError(serdeMessage(err))
	}
	return raw, nil
}

// serdeExpected is how serde lists a struct's fields after an unknown one.
func serdeExpected(fields []string) string {
	quoted := make([]string, len(fields))
	for i, f := range fields {
		quoted[i] = "`" + f + "`"
	}
	switch len(quoted) {
	case 0:
		return "there are no fields"
	case 1:
		return "expected " + quoted[0]
	case 2:
		return "expected " + quoted[0] + " or " + quoted[1]
	}
	return "expected one of " + strings.Join(quoted, ", ")
}

// serdeMessage turns encoding/json's errors into wording close to serde's.
func serdeMessage(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		field := te.Field
		if i := strings.LastIndex(field, "."); i >= 0 {
			field = field[i+1:]
		}
		return fmt.Sprintf("invalid type: %s, expected %s for field `%s`", te.Value, rustType(te.Type), field)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%s at offset %d", se.Error(), se.Offset)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

func rustType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "i64"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "u64"
	case reflect.Struct, reflect.Map:
		return "a struct"
	case reflect.Slice:
		return "a sequence"
	}
	return t.String()
}

// validationMessage renders go-openapi validation errors; a missing required
// field reads as serde's "missing field `x`".
func validationMessage(err error) string {
	var ce *oaerrors.CompositeError
	if errors.As(err, &ce) && len(ce.Errors) > 0 {
		return validationMessage(ce.Errors[0])
	}
	var ve *oaerrors.Validation
	if errors.As(err, &ve) {
		if ve.Code() == oaerrors.RequiredFailCode {
			name := ve.Name
			if i := strings.LastIndex(name, "."); i >= 0 {
				name = name[i+1:]
			}
			return fmt.Sprintf("missing field `%s`", name)
		}
		return ve.Error()
	}
	return err.Error()
}

// validateModel runs a model's swagger validation; optional names fields
// Firecracker v1.14.1 no longer requires although the SDK's v1.0.0 schema
// does.
func validateModel(m validatable, optional ...string) *apiError {
	err := m.Validate(strfmt.Default)
	if err == nil {
		return nil
	}
	msg := validationMessage(err)
	for _, o := range optional {
		if msg == "missing field `"+o+"`" {
			return nil
		}
	}
	return deserializeError(msg)
}
