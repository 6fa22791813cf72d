// Package gantry is the Go client for gantry, the gRPC control plane a fleet
// of services shares: rate limits, a shared cache, SQL query analysis, span
// ingestion and leases on global connection budgets.
//
// The generated stubs are in gen/gantry/v1; this package adds what callers
// write around them anyway: one connection with retries on UNAVAILABLE,
// deadlines, a rate limiter that waits its turn, a lease that renews itself,
// a near cache kept coherent through Watch, and a background query recorder.
package gantry

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	gantryv1 "github.com/gantry/gantry/clients/go/gen/gantry/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Client holds one connection (HTTP/2 multiplexes every call over it) and
// the service stubs. It is safe for concurrent use.
type Client struct {
	conn *grpc.ClientConn

	RateLimiter gantryv1.RateLimiterClient
	Cache       gantryv1.CacheClient
	Query       gantryv1.QueryAnalyzerClient
	Traces      gantryv1.TracesClient
	Leases      gantryv1.LeasesClient

	timeout time.Duration
}

type options struct {
	timeout    time.Duration
	retries    int
	backoff    time.Duration
	maxBackoff time.Duration
	dial       []grpc.DialOption
}

// Option configures New.
type Option func(*options)

// WithTimeout sets the deadline of calls whose context has none (default 5 s).
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithRetries sets how often a call that failed with UNAVAILABLE is tried again
// (default 3), with jittered exponential backoff from 50 ms up to 2 s.
func WithRetries(n int) Option { return func(o *options) { o.retries = n } }

// WithDialOptions adds gRPC dial options (TLS credentials, interceptors...).
// Without credentials the connection is plaintext.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

// New connects to gantry at target (host:port). The connection is made
// lazily and re-established by gRPC as needed.
func New(target string, opts ...Option) (*Client, error) {
	o := options{timeout: 5 * time.Second, retries: 3, backoff: 50 * time.Millisecond, maxBackoff: 2 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	dial := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(deadline(o.timeout), retry(o)),
	}, o.dial...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, err
	}
	return &Client{
		conn:        conn,
		RateLimiter: gantryv1.NewRateLimiterClient(conn),
		Cache:       gantryv1.NewCacheClient(conn),
		Query:       gantryv1.NewQueryAnalyzerClient(conn),
		Traces:      gantryv1.NewTracesClient(conn),
		Leases:      gantryv1.NewLeasesClient(conn),
		timeout:     o.timeout,
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// deadline gives calls without one the default timeout.
func deadline(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok && d > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// retry tries again on UNAVAILABLE (gantry restarting, a connection reset)
// with jittered exponential backoff, within the call's deadline.
func retry(o options) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		backoff := o.backoff
		for attempt := 0; ; attempt++ {
			err := invoker(ctx, method, req, reply, cc, opts...)
			if status.Code(err) != codes.Unavailable || attempt >= o.retries {
				return err
			}
			pause := backoff/2 + time.Duration(rand.Int64N(int64(backoff)))
			select {
			case <-ctx.Done():
				return err
			case <-time.After(pause):
			}
			backoff = min(backoff*2, o.maxBackoff)
		}
	}
}

// ErrNotGranted is returned when a wait ran out without a grant.
var ErrNotGranted = errors.New("gantry: not granted")
