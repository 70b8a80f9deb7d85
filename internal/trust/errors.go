package trust

import (
	"errors"
	"fmt"
)

// Error classes of the key, the signature and the capped fetch.
var (
	// ErrTooLarge: a download exceeded its size cap.
	ErrTooLarge = errors.New("download exceeds its size cap")
	// ErrKeyNotConfigured: the release key is the placeholder (or absent).
	ErrKeyNotConfigured = errors.New("release key not configured")
	// ErrBadKey: a public key that is not a PEM PKIX ECDSA P-256 key.
	ErrBadKey = errors.New("bad release public key")
	// ErrMalformedSignature: the signature is not base64 of an ASN.1 DER ECDSA signature.
	ErrMalformedSignature = errors.New("malformed signature")
	// ErrBadSignature: a well-formed signature that does not verify.
	ErrBadSignature = errors.New("signature does not verify")
)

// classErr carries a class for errors.Is and its own one-line message, so
// the text does not have to repeat the class; cause, if any, stays
// reachable through errors.Is and errors.As.
type classErr struct {
	class error
	msg   string
	cause error
}

func (e *classErr) Error() string { return e.msg }

func (e *classErr) Is(target error) bool { return target == e.class }

func (e *classErr) Unwrap() error { return e.cause }

// Refuse returns an error of class (errors.Is(err, class) holds) whose
// message is the formatted text alone.
func Refuse(class error, format string, args ...any) error {
	return &classErr{class: class, msg: fmt.Sprintf(format, args...)}
}

// RefuseWrap is Refuse that also keeps cause for errors.Is and errors.As
// (e.g. a context error).
func RefuseWrap(class, cause error, format string, args ...any) error {
	return &classErr{class: class, msg: fmt.Sprintf(format, args...), cause: cause}
}

// IsRefusal reports whether err is, or wraps, an error made by Refuse or
// RefuseWrap (a refusal already classified, as opposed to an I/O error).
func IsRefusal(err error) bool {
	var ce *classErr
	return errors.As(err, &ce)
}
