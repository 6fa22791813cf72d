package gantry

import (
	"strings"
	"testing"
	"time"

	gantryv1 "github.com/gantry/gantry/clients/go/gen/gantry/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time          { return c.now }
func (c *fakeClock) advance(d time.Duration) { c.now = c.now.Add(d) }

func TestBreakerOpensProbesAndCloses(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	b := newBreaker(3, time.Second, 4*time.Second, clock.Now)
	fail := func() {
		t.Helper()
		ok, probe, _ := b.admit()
		if !ok {
			t.Fatal("a call was refused while the breaker should be closed")
		}
		b.record(probe, failed)
	}
	fail()
	fail()
	// An answer in between starts the count again.
	if ok, probe, _ := b.admit(); !ok {
		t.Fatal("refused while closed")
	} else {
		b.record(probe, answered)
	}
	fail()
	fail()
	fail() // the third in a row opens it
	if ok, _, wait := b.admit(); ok || wait != time.Second {
		t.Fatalf("open: want refused for 1s, got ok=%v wait=%v", ok, wait)
	}
	clock.advance(time.Second)
	ok, probe, _ := b.admit()
	if !ok || !probe {
		t.Fatal("after the back-off one probe goes through")
	}
	if ok, _, _ := b.admit(); ok {
		t.Fatal("a second call went through while the probe is out")
	}
	b.record(probe, failed) // the probe failed: twice the back-off
	if ok, _, wait := b.admit(); ok || wait != 2*time.Second {
		t.Fatalf("after a failed probe: want 2s, got ok=%v wait=%v", ok, wait)
	}
	for _, want := range []time.Duration{4 * time.Second, 4 * time.Second} { // capped at the longest
		clock.advance(b.remaining())
		_, probe, _ = b.admit()
		b.record(probe, failed)
		if got := b.remaining(); got != want {
			t.Fatalf("back-off: want %v, got %v", want, got)
		}
	}
	// A probe the caller cancelled lets the next call probe instead.
	clock.advance(b.remaining())
	_, probe, _ = b.admit()
	b.record(probe, neither)
	ok, probe, _ = b.admit()
	if !ok || !probe {
		t.Fatal("after a cancelled probe the next call probes")
	}
	b.record(probe, answered)
	if ok, probe, _ := b.admit(); !ok || probe || b.remaining() != 0 {
		t.Fatal("an answered probe closes the breaker")
	}
}

func TestLocalBucketUsesTheLimitsShare(t *testing.T) {
	info := &gantryv1.LimitInfo{Name: "api", Rate: 100, Period: durationpb.New(time.Second), Burst: 40,
		Overrides: []*gantryv1.LimitOverride{{Key: "vip", Rate: 1000, Period: durationpb.New(time.Second), Burst: 400}}}
	l := &localLimits{info: info, buckets: map[string]*tokenBucket{}}
	now := time.Unix(1000, 0)
	// A share of 4: burst 10, 25 tokens a second.
	for i := 0; i < 10; i++ {
		if ok, _, _ := l.take(now, "a", 1, 4); !ok {
			t.Fatalf("token %d of the burst of 10 refused", i)
		}
	}
	ok, _, retry := l.take(now, "a", 1, 4)
	if ok || retry != 40*time.Millisecond {
		t.Fatalf("the 11th: want refused, retry after 40ms, got %v %v", ok, retry)
	}
	if ok, _, _ := l.take(now.Add(40*time.Millisecond), "a", 1, 4); !ok {
		t.Fatal("a token accrues after 40ms at 25/s")
	}
	// Another key has its own bucket; an override its own parameters.
	if ok, _, _ := l.take(now, "b", 10, 4); !ok {
		t.Fatal("key b has a full bucket of its own")
	}
	if ok, _, _ := l.take(now, "vip", 100, 4); !ok {
		t.Fatal("the override's burst of 400/4 = 100")
	}
	// More than the burst can never be granted.
	if ok, _, retry := l.take(now, "c", 11, 4); ok || retry < time.Minute {
		t.Fatalf("11 tokens from a burst of 10: %v %v", ok, retry)
	}
	// A shared limit has one bucket for every key.
	shared := &localLimits{info: &gantryv1.LimitInfo{Rate: 1, Period: durationpb.New(time.Minute), Burst: 1,
		Scope: gantryv1.LimitScope_LIMIT_SCOPE_SHARED}, buckets: map[string]*tokenBucket{}}
	if ok, _, _ := shared.take(now, "x", 1, 1); !ok {
		t.Fatal("the shared bucket's one token")
	}
	if ok, _, _ := shared.take(now, "y", 1, 1); ok {
		t.Fatal("another key took from an empty shared bucket")
	}
}

func TestPolicyFallbacks(t *testing.T) {
	var p policyState
	cause := &Error{Code: 14, Message: "connection refused"}
	if d := p.fallback(FailOpen, "api", "k", 1, 1, 0, cause); !d.Allowed || d.Source != FromFailOpen {
		t.Fatalf("fail_open: %+v", d)
	}
	d := p.fallback(FailClosed, "api", "k", 1, 1, 0, cause)
	if d.Allowed || d.Source != FromFailClosed || d.RetryAfter != 100*time.Millisecond ||
		!strings.Contains(d.Reason, "gantry unreachable: Unavailable: connection refused") {
		t.Fatalf("fail_closed: %+v", d)
	}
	// Local before the limit was ever learned answers as fail_open, and says why.
	if d := p.fallback(Local, "api", "k", 1, 1, 0, cause); !d.Allowed || d.Source != FromFailOpen || !strings.Contains(d.Reason, "not learned") {
		t.Fatalf("local, unlearned: %+v", d)
	}
	p.learn(&gantryv1.ListLimitsResponse{Limits: []*gantryv1.LimitInfo{{Name: "api", Rate: 1, Period: durationpb.New(time.Hour), Burst: 1}}})
	if d := p.fallback(Local, "api", "k", 1, 1, 0, cause); !d.Allowed || d.Source != FromLocal {
		t.Fatalf("local, first token: %+v", d)
	}
	if d := p.fallback(Local, "api", "k", 1, 1, 0, cause); d.Allowed || d.Source != FromLocal || d.RetryAfter <= 0 {
		t.Fatalf("local, empty bucket: %+v", d)
	}
}

// Every method named as idempotent exists, and none of the calls that act is among them.
func TestIdempotentMethodsExist(t *testing.T) {
	known := map[string]bool{}
	for _, desc := range []grpc.ServiceDesc{gantryv1.RateLimiter_ServiceDesc, gantryv1.Cache_ServiceDesc,
		gantryv1.Leases_ServiceDesc, gantryv1.QueryAnalyzer_ServiceDesc, gantryv1.Traces_ServiceDesc} {
		for _, m := range desc.Methods {
			known["/"+desc.ServiceName+"/"+m.MethodName] = true
		}
	}
	for method := range idempotent {
		if !known[method] {
			t.Errorf("%s is not a unary method of gantry", method)
		}
	}
	for _, acts := range []string{"/gantry.v1.RateLimiter/Acquire", "/gantry.v1.Cache/Put", "/gantry.v1.Leases/Acquire",
		"/gantry.v1.Leases/Release", "/gantry.v1.QueryAnalyzer/Record", "/gantry.v1.Traces/Ingest"} {
		if idempotent[acts] {
			t.Errorf("%s would be retried", acts)
		}
	}
}
