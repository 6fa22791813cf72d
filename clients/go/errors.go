package gantry

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrNotGranted is returned when a wait ran out without a grant.
var ErrNotGranted = errors.New("gantry: not granted")

// ErrClosed is what every call made after Client.Close returns (inside an
// *Error with code Canceled, as gRPC's own closed connection answers).
var ErrClosed = errors.New("gantry: the client is closed")

// Error is any failure of a call other than ErrNotGranted: gantry's refusal
// or the connection's, with the gRPC code. It keeps the gRPC status, so
// status.Code(err) and status.FromError(err) work on it as on gRPC's errors.
//
//	var gerr *gantry.Error
//	if errors.As(err, &gerr) && gerr.Code == codes.InvalidArgument { ... }
type Error struct {
	Code    codes.Code
	Message string
	cause   error
}

func (e *Error) Error() string { return fmt.Sprintf("gantry: %s: %s", e.Code, e.Message) }

// Unwrap gives the underlying gRPC error (or ErrClosed).
func (e *Error) Unwrap() error { return e.cause }

// GRPCStatus lets status.Code and status.FromError read the code.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// wrapError turns a gRPC error into an *Error; nil and non-gRPC errors
// (a context's own) pass unchanged.
func wrapError(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	return &Error{Code: s.Code(), Message: s.Message(), cause: err}
}

func closedError() error {
	return &Error{Code: codes.Canceled, Message: "the client is closed", cause: ErrClosed}
}

func isNotFound(err error) bool { return status.Code(err) == codes.NotFound }
