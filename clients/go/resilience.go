package gantry

// What keeps a caller running when gantry does not answer: the rate
// limiter's failure policy, the local token bucket it can fall back to and
// the circuit breaker. docs/client-resilience.md describes them for all four
// clients; the numbers below are the ones it gives.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	gantryv1 "github.com/gantry/gantry/clients/go/gen/gantry/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// FailurePolicy is what a Limiter answers when gantry does not.
type FailurePolicy int

const (
	// FailOpen allows (the default, as Envoy's rate-limit filter does).
	FailOpen FailurePolicy = iota
	// FailClosed denies, saying why.
	FailClosed
	// Local decides with a token bucket in this process: the limit's last
	// known rate and burst divided by the client's local share.
	Local
)

func (p FailurePolicy) String() string {
	switch p {
	case FailClosed:
		return "fail_closed"
	case Local:
		return "local"
	default:
		return "fail_open"
	}
}

// DecisionSource says who made a Decision.
type DecisionSource int

const (
	// FromServer: gantry decided.
	FromServer DecisionSource = iota
	// FromFailOpen: gantry did not answer and the policy allowed.
	FromFailOpen
	// FromFailClosed: gantry did not answer and the policy denied.
	FromFailClosed
	// FromLocal: gantry did not answer and the local bucket decided.
	FromLocal
)

func (s DecisionSource) String() string {
	switch s {
	case FromFailOpen:
		return "fail_open"
	case FromFailClosed:
		return "fail_closed"
	case FromLocal:
		return "local"
	default:
		return "server"
	}
}

// DecisionCounts is how many decisions each source made (Client.Decisions).
type DecisionCounts struct {
	Server, FailOpen, FailClosed, Local uint64
}

// ErrCircuitOpen is the cause of the UNAVAILABLE *Error a call gets at once
// while the circuit breaker is open.
var ErrCircuitOpen = errors.New("gantry: circuit open")

// unanswered reports whether err means gantry did not answer (as opposed to
// answering with a refusal): UNAVAILABLE, DEADLINE_EXCEEDED, an open breaker.
func unanswered(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return errors.Is(err, context.DeadlineExceeded)
}

// waiter is a request that asks gantry to wait (for tokens or units).
type waiter interface{ GetMaxWait() *durationpb.Duration }

// waitedToItsDeadline reports whether err is the end of a call that asked
// gantry to wait until the caller's deadline: gantry answers just before it,
// so which comes first is a race, and neither means gantry is down.
func waitedToItsDeadline(req any, err error) bool {
	w, ok := req.(waiter)
	return ok && w.GetMaxWait() != nil && status.Code(err) == codes.DeadlineExceeded
}

// idempotent are the methods a retry cannot make act twice: the only ones
// retried on UNAVAILABLE (docs/client-resilience.md has the table).
var idempotent = map[string]bool{
	"/gantry.v1.RateLimiter/ListLimits":    true,
	"/gantry.v1.RateLimiter/InspectBucket": true,
	"/gantry.v1.RateLimiter/HotKeys":       true,
	"/gantry.v1.Cache/Get":                 true,
	"/gantry.v1.Cache/GetMany":             true,
	"/gantry.v1.Cache/Stats":               true,
	"/gantry.v1.Leases/Renew":              true,
	"/gantry.v1.Leases/PoolStatus":         true,
	"/gantry.v1.QueryAnalyzer/Analyze":     true,
	"/gantry.v1.QueryAnalyzer/TopQueries":  true,
	"/gantry.v1.QueryAnalyzer/SlowQueries": true,
	"/gantry.v1.Traces/GetTrace":           true,
	"/gantry.v1.Traces/EndpointStats":      true,
}

// breaker is the client's circuit breaker: closed until `threshold`
// consecutive failures, then open for a back-off, then one probe; a failed
// probe doubles the back-off up to `longest`. Pure but for the clock it is given.
type breaker struct {
	mu        sync.Mutex
	now       func() time.Time
	threshold int
	shortest  time.Duration
	longest   time.Duration

	failures  int
	backoff   time.Duration
	openUntil time.Time // zero: closed
	probing   bool
}

func newBreaker(threshold int, shortest, longest time.Duration, now func() time.Time) *breaker {
	return &breaker{now: now, threshold: max(threshold, 1), shortest: shortest, longest: max(longest, shortest), backoff: shortest}
}

// admit says whether a call may go now, and whether it is the probe; when it
// may not, how long until the next probe.
func (b *breaker) admit() (ok, probe bool, wait time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.openUntil.IsZero() {
		return true, false, 0
	}
	if now := b.now(); now.Before(b.openUntil) {
		return false, false, b.openUntil.Sub(now)
	}
	if b.probing {
		return false, false, 0
	}
	b.probing = true
	return true, true, 0
}

// remaining is how long until the next probe may go (0 when closed).
func (b *breaker) remaining() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.openUntil.IsZero() {
		return 0
	}
	return max(b.openUntil.Sub(b.now()), 0)
}

// outcome records how an admitted call ended: failed (gantry did not
// answer), answered, or neither (the caller cancelled it).
type outcome int

const (
	answered outcome = iota
	failed
	neither
)

func (b *breaker) record(probe bool, o outcome) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if probe {
		b.probing = false
	}
	switch o {
	case answered:
		b.failures, b.backoff, b.openUntil = 0, b.shortest, time.Time{}
	case failed:
		b.failures++
		switch {
		case probe:
			b.backoff = min(b.backoff*2, b.longest)
			b.openUntil = b.now().Add(b.backoff)
		case b.openUntil.IsZero() && b.failures >= b.threshold:
			b.openUntil = b.now().Add(b.backoff)
		}
	}
}

// unary is the breaker as an interceptor around every unary call.
func (b *breaker) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	ok, probe, wait := b.admit()
	if !ok {
		msg := "circuit open: gantry did not answer the last calls"
		if wait > 0 {
			msg += fmt.Sprintf("; next try in %v", wait.Round(time.Millisecond))
		}
		return &Error{Code: codes.Unavailable, Message: msg, cause: ErrCircuitOpen}
	}
	err := invoker(ctx, method, req, reply, cc, opts...)
	switch {
	case err == nil:
		b.record(probe, answered)
	case errors.Is(ctx.Err(), context.Canceled), waitedToItsDeadline(req, err):
		b.record(probe, neither)
	case unanswered(err):
		b.record(probe, failed)
	default:
		b.record(probe, answered)
	}
	return err
}

// tokenBucket is the local policy's bucket: `rate` tokens per second up to
// `burst`, starting full.
type tokenBucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func (b *tokenBucket) take(now time.Time, n uint64) (ok bool, remaining uint64, retryAfter time.Duration) {
	if b.last.IsZero() {
		b.tokens = b.burst
	} else if elapsed := now.Sub(b.last).Seconds(); elapsed > 0 {
		b.tokens = math.Min(b.burst, b.tokens+elapsed*b.rate)
	}
	b.last = now
	want := float64(n)
	if want <= b.tokens {
		b.tokens -= want
		return true, uint64(b.tokens), 0
	}
	if want > b.burst || b.rate <= 0 {
		return false, uint64(b.tokens), time.Hour // can never be granted
	}
	return false, uint64(b.tokens), time.Duration((want - b.tokens) / b.rate * float64(time.Second))
}

// localLimits are one limit's parameters (learned from ListLimits) and its
// local buckets.
type localLimits struct {
	info    *gantryv1.LimitInfo
	buckets map[string]*tokenBucket
}

const maxLocalKeys = 10_000

// take decides n tokens for key on the local bucket, at share of the limit.
func (l *localLimits) take(now time.Time, key string, n uint64, share int) (ok bool, remaining uint64, retryAfter time.Duration) {
	if l.info.GetScope() == gantryv1.LimitScope_LIMIT_SCOPE_SHARED {
		key = ""
	}
	b, found := l.buckets[key]
	if !found {
		if len(l.buckets) >= maxLocalKeys {
			clear(l.buckets)
		}
		rate, period, burst := l.info.GetRate(), l.info.GetPeriod().AsDuration(), l.info.GetBurst()
		for _, o := range l.info.GetOverrides() {
			if o.GetKey() == key {
				rate, period, burst = o.GetRate(), o.GetPeriod().AsDuration(), o.GetBurst()
			}
		}
		perSecond := 0.0
		if period > 0 {
			perSecond = float64(rate) / period.Seconds()
		}
		s := float64(max(share, 1))
		b = &tokenBucket{rate: perSecond / s, burst: math.Max(1, math.Floor(float64(burst)/s))}
		l.buckets[key] = b
	}
	return b.take(now, n)
}

// policyState is what a client's limiters share to answer without gantry:
// the limits learned, their local buckets and the decision counters.
type policyState struct {
	mu      sync.Mutex
	limits  map[string]*localLimits
	learned time.Time
	counts  DecisionCounts
	hook    func(limit string, d Decision)
}

// relearnEvery is how often, while gantry answers, the local policy asks
// ListLimits again.
const relearnEvery = time.Minute

func (p *policyState) count(limit string, d Decision) {
	p.mu.Lock()
	switch d.Source {
	case FromServer:
		p.counts.Server++
	case FromFailOpen:
		p.counts.FailOpen++
	case FromFailClosed:
		p.counts.FailClosed++
	case FromLocal:
		p.counts.Local++
	}
	hook := p.hook
	p.mu.Unlock()
	if hook != nil {
		hook(limit, d)
	}
}

// needsLearning says whether ListLimits should be asked (never, or over a
// minute ago), claiming the turn so that one caller asks.
func (p *policyState) needsLearning(limit string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, known := p.limits[limit]; known && now.Sub(p.learned) < relearnEvery {
		return false
	}
	if now.Sub(p.learned) < time.Second {
		return false // asked a moment ago (the limit may not exist)
	}
	p.learned = now
	return true
}

// learn keeps what ListLimits answered; buckets of unchanged limits stay.
func (p *policyState) learn(resp *gantryv1.ListLimitsResponse) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.limits == nil {
		p.limits = map[string]*localLimits{}
	}
	byName := map[string]*gantryv1.LimitInfo{}
	for _, info := range resp.GetLimits() {
		byName[info.GetName()] = info
	}
	if def := byName[resp.GetDefaultLimit()]; def != nil {
		byName[""] = def // what unknown names are decided by
	}
	for name, info := range byName {
		if old, ok := p.limits[name]; ok && proto.Equal(old.info, info) {
			continue
		}
		p.limits[name] = &localLimits{info: info, buckets: map[string]*tokenBucket{}}
	}
}

// fallback is the policy's decision for a call gantry did not answer.
func (p *policyState) fallback(policy FailurePolicy, limit, key string, tokens uint64, share int, retry time.Duration, cause error) Decision {
	switch policy {
	case FailClosed:
		return Decision{Allowed: false, RetryAfter: max(retry, 100*time.Millisecond), Source: FromFailClosed,
			Reason: "gantry unreachable: " + strings.TrimPrefix(cause.Error(), "gantry: ")}
	case Local:
		p.mu.Lock()
		l := p.limits[limit]
		if l == nil {
			l = p.limits[""]
		}
		if l != nil {
			ok, remaining, after := l.take(time.Now(), key, tokens, share)
			p.mu.Unlock()
			return Decision{Allowed: ok, Remaining: remaining, RetryAfter: after, Source: FromLocal}
		}
		p.mu.Unlock()
		return Decision{Allowed: true, Source: FromFailOpen, Reason: "limit " + limit + " not learned yet"}
	default:
		return Decision{Allowed: true, Source: FromFailOpen}
	}
}
