// Package errdefs defines banger's error classes and their wire codes. The
// daemon maps an error to a code in one place (CodeOf) and the client maps a
// code back to the same class, so errors.Is(err, errdefs.ErrNotFound) holds on
// both sides of the socket.
package errdefs

import (
	"errors"
	"fmt"
)

// Code is a wire error code.
type Code string

// The wire codes.
const (
	NotFound        Code = "not_found"
	AlreadyExists   Code = "already_exists"
	BadRequest      Code = "bad_request"
	UnknownMethod   Code = "unknown_method"
	Unauthorized    Code = "unauthorized"
	BadVersion      Code = "bad_version"
	OperationFailed Code = "operation_failed"
	Unavailable     Code = "unavailable"
)

// Error is a classified error. OpID is set when it crossed the RPC socket.
type Error struct {
	Code  Code
	Msg   string
	OpID  string
	cause error
}

func (e *Error) Error() string { return e.Msg }

// Unwrap returns the underlying cause, if any.
func (e *Error) Unwrap() error { return e.cause }

// Is matches class sentinels: errors.Is(err, ErrNotFound).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Msg == "" && t.Code == e.Code
}

// Sentinels for errors.Is.
var (
	ErrNotFound        = &Error{Code: NotFound}
	ErrAlreadyExists   = &Error{Code: AlreadyExists}
	ErrBadRequest      = &Error{Code: BadRequest}
	ErrUnknownMethod   = &Error{Code: UnknownMethod}
	ErrUnauthorized    = &Error{Code: Unauthorized}
	ErrBadVersion      = &Error{Code: BadVersion}
	ErrOperationFailed = &Error{Code: OperationFailed}
	ErrUnavailable     = &Error{Code: Unavailable}
)

// New makes a classified error.
func New(code Code, format string, a ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, a...)}
}

// Wrap classifies err, keeping its message.
func Wrap(code Code, err error) *Error {
	return &Error{Code: code, Msg: err.Error(), cause: err}
}

// NotFoundf and friends are shorthands.
func NotFoundf(format string, a ...any) error { return New(NotFound, format, a...) }

// AlreadyExistsf is a shorthand for New(AlreadyExists, ...).
func AlreadyExistsf(format string, a ...any) error { return New(AlreadyExists, format, a...) }

// BadRequestf is a shorthand for New(BadRequest, ...).
func BadRequestf(format string, a ...any) error { return New(BadRequest, format, a...) }

// CodeOf returns err's class; unclassified errors are operation_failed.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return OperationFailed
}

// OpIDOf returns the op id an error carries, if any.
func OpIDOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.OpID
	}
	return ""
}
