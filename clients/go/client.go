// Package gantry is the Go client for gantry, the gRPC control plane a fleet
// of services shares: rate limits, a shared cache, SQL query analysis, span
// ingestion and leases on global connection budgets.
//
// The generated stubs are in gen/gantry/v1; this package adds what callers
// write around them anyway: one connection balanced over every replica,
// retries of idempotent calls on UNAVAILABLE, deadlines, a circuit breaker,
// a rate limiter that waits its turn and has a policy for when gantry does
// not answer, a lease that renews itself, a near cache kept coherent through
// Watch, and a background query recorder.
package gantry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gantryv1 "github.com/gantry/gantry/clients/go/gen/gantry/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
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
	closed  atomic.Bool
	// owned is what Close ends with the connection: recorders (flushed),
	// near caches' Watch streams and leases' renewals.
	mu    sync.Mutex
	owned map[any]func(context.Context)

	breaker *breaker
	policy  FailurePolicy
	share   int
	local   policyState
}

type options struct {
	timeout    time.Duration
	retries    int
	backoff    time.Duration
	maxBackoff time.Duration
	dial       []grpc.DialOption
	tls        *tlsFiles
	serverName string
	token      string
	policy     FailurePolicy
	share      int
	hook       func(limit string, d Decision)
	failures   int
	openFor    time.Duration
	maxOpenFor time.Duration
}

type tlsFiles struct{ ca, cert, key string }

// Option configures New.
type Option func(*options)

// WithTimeout sets the deadline of calls whose context has none (default 5 s).
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithRetries sets how often an idempotent call (docs/client-resilience.md
// lists them) that failed with UNAVAILABLE is tried again (default 3), with
// jittered exponential backoff from 50 ms up to 2 s.
func WithRetries(n int) Option { return func(o *options) { o.retries = n } }

// WithDialOptions adds gRPC dial options (TLS credentials, interceptors...).
// Without credentials the connection is plaintext.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

// WithTLS connects over TLS (gantry's [server.tls]), trusting the CA
// certificates in caFile (PEM; empty: the system's roots). certFile and
// keyFile, when both are set, are the client certificate for mutual TLS.
func WithTLS(caFile, certFile, keyFile string) Option {
	return func(o *options) { o.tls = &tlsFiles{ca: caFile, cert: certFile, key: keyFile} }
}

// WithServerName sets the name the server's certificate must carry
// (default: the host of the target).
func WithServerName(name string) Option { return func(o *options) { o.serverName = name } }

// WithToken sends "authorization: Bearer <token>" with every call (gantry's
// [auth]). It needs WithTLS: a token is never sent in plaintext.
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithFailurePolicy sets what limiters answer when gantry does not
// (default FailOpen); docs/client-resilience.md explains each.
func WithFailurePolicy(p FailurePolicy) Option { return func(o *options) { o.policy = p } }

// WithLocalShare sets how many instances share each limit, for the Local
// policy: its bucket gets rate/share and burst/share (default 1).
func WithLocalShare(n int) Option { return func(o *options) { o.share = max(n, 1) } }

// WithDecisionHook calls hook with every limiter decision (its Source says
// who made it), e.g. to count them in the service's metrics. It runs on the
// caller's goroutine: keep it quick.
func WithDecisionHook(hook func(limit string, d Decision)) Option {
	return func(o *options) { o.hook = hook }
}

// WithCircuitBreaker sets after how many consecutive failures (UNAVAILABLE,
// DEADLINE_EXCEEDED) calls fail at once, for how long before one probe goes
// through, and the longest back-off a failing probe doubles it to (default
// 5, 1 s, 30 s).
func WithCircuitBreaker(failures int, openFor, maxOpenFor time.Duration) Option {
	return func(o *options) { o.failures, o.openFor, o.maxOpenFor = failures, openFor, maxOpenFor }
}

// bearer is a token sent with every call, over TLS only.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

// transport is the connection's credentials: plaintext, or TLS from the files.
func transport(o options) (grpc.DialOption, error) {
	if o.tls == nil {
		if o.token != "" {
			return nil, errors.New("gantry: WithToken needs WithTLS (a token is never sent in plaintext)")
		}
		return grpc.WithTransportCredentials(insecure.NewCredentials()), nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.serverName}
	if o.tls.ca != "" {
		pem, err := os.ReadFile(o.tls.ca)
		if err != nil {
			return nil, fmt.Errorf("gantry: CA file: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("gantry: no PEM certificate in %s", o.tls.ca)
		}
	}
	if o.tls.cert != "" || o.tls.key != "" {
		pair, err := tls.LoadX509KeyPair(o.tls.cert, o.tls.key)
		if err != nil {
			return nil, fmt.Errorf("gantry: client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg)), nil
}

// roundRobin balances calls over every address the target has.
const roundRobin = `{"loadBalancingConfig": [{"round_robin": {}}]}`

// New connects to gantry at target: one address (host:port), a
// comma-separated list of them, or a name resolving to several
// (dns:///gantry-headless:7070); calls are balanced round-robin over them.
// The connections are made lazily and re-established by gRPC as needed.
func New(target string, opts ...Option) (*Client, error) {
	o := options{timeout: 5 * time.Second, retries: 3, backoff: 50 * time.Millisecond, maxBackoff: 2 * time.Second,
		share: 1, failures: 5, openFor: time.Second, maxOpenFor: 30 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	creds, err := transport(o)
	if err != nil {
		return nil, err
	}
	c := &Client{timeout: o.timeout, owned: map[any]func(context.Context){},
		breaker: newBreaker(o.failures, o.openFor, o.maxOpenFor, time.Now),
		policy:  o.policy, share: o.share, local: policyState{hook: o.hook}}
	dial := []grpc.DialOption{creds,
		grpc.WithDefaultServiceConfig(roundRobin),
		grpc.WithChainUnaryInterceptor(c.guardUnary, deadline(o.timeout), c.breaker.unary, retry(o)),
		grpc.WithChainStreamInterceptor(c.guardStream)}
	if list := strings.Split(target, ","); len(list) > 1 {
		target = endpoints(list, &dial)
	}
	if o.token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer(o.token)))
	}
	dial = append(dial, o.dial...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, err
	}
	c.conn = conn
	c.RateLimiter = gantryv1.NewRateLimiterClient(conn)
	c.Cache = gantryv1.NewCacheClient(conn)
	c.Query = gantryv1.NewQueryAnalyzerClient(conn)
	c.Traces = gantryv1.NewTracesClient(conn)
	c.Leases = gantryv1.NewLeasesClient(conn)
	return c, nil
}

// endpoints resolves target to a fixed list of addresses (a resolver that
// only this connection knows) and returns the target naming it.
func endpoints(list []string, dial *[]grpc.DialOption) string {
	r := manual.NewBuilderWithScheme("gantry-endpoints")
	addrs := make([]resolver.Address, 0, len(list))
	for _, a := range list {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, resolver.Address{Addr: a})
		}
	}
	r.InitialState(resolver.State{Addresses: addrs})
	*dial = append(*dial, grpc.WithResolvers(r))
	return r.Scheme() + ":///endpoints"
}

// Decisions is how many limiter decisions each source made so far.
func (c *Client) Decisions() DecisionCounts {
	c.local.mu.Lock()
	defer c.local.mu.Unlock()
	return c.local.counts
}

// Close flushes the recorders this client made, ends its near caches' Watch
// streams and its leases' renewals (their units return when the TTL ends;
// Release them first to return them at once), then closes the connection.
// Every call after it fails with ErrClosed (code Canceled). It waits for the
// recorders' last batches at most the client's timeout; CloseContext takes a
// context instead.
func (c *Client) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	return c.CloseContext(ctx)
}

// CloseContext is Close, waiting for the recorders' last batches until ctx ends.
func (c *Client) CloseContext(ctx context.Context) error {
	c.mu.Lock()
	owned := c.owned
	c.owned = nil
	c.mu.Unlock()
	if owned == nil {
		return nil // closed before
	}
	for _, shutDown := range owned {
		shutDown(ctx)
	}
	c.closed.Store(true)
	return c.conn.Close()
}

// own registers what Close must end; the returned function forgets it. It
// reports false after Close.
func (c *Client) own(key any, shutDown func(context.Context)) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.owned == nil {
		return false
	}
	c.owned[key] = shutDown
	return true
}

func (c *Client) forget(key any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.owned, key)
}

// guardUnary refuses calls after Close and wraps failures in *Error.
func (c *Client) guardUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if c.closed.Load() {
		return closedError()
	}
	return wrapError(invoker(ctx, method, req, reply, cc, opts...))
}

// guardStream is guardUnary for streams (Watch, ExportSpans): at the open.
func (c *Client) guardStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if c.closed.Load() {
		return nil, closedError()
	}
	stream, err := streamer(ctx, desc, cc, method, opts...)
	return stream, wrapError(err)
}

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

// retry tries an idempotent call again on UNAVAILABLE (gantry restarting, a
// connection reset; round-robin sends it to the next replica) with jittered
// exponential backoff, within the call's deadline. Other calls are not
// repeated: a second Acquire would take tokens twice.
func retry(o options) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if !idempotent[method] {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
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
