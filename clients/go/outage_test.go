package gantry

import (
	"context"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	gantryv1 "github.com/gantry/gantry/clients/go/gen/gantry/v1"
)

// freeAddr is a loopback address nothing listens on, for a gantry that is
// restarted on the same port.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// call is one limiter call of a steady stream.
type call struct {
	at       time.Time
	took     time.Duration
	decision Decision
	err      error
}

// stream calls limiter.Acquire every 5 ms with a 300 ms deadline until stop.
func stream(l *Limiter, stop <-chan struct{}) <-chan []call {
	out := make(chan []call, 1)
	go func() {
		var calls []call
		for {
			select {
			case <-stop:
				out <- calls
				return
			case <-time.After(5 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			started := time.Now()
			d, err := l.Acquire(ctx, 1)
			cancel()
			calls = append(calls, call{at: started, took: time.Since(started), decision: d, err: err})
		}
	}()
	return out
}

func eventually(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLimiterPoliciesWhenGantryIsKilledAndRestarted(t *testing.T) {
	addr, data := freeAddr(t), filepath.Join(t.TempDir(), "data")
	server, _ := runGantry(t, addr, data, nil)
	policies := []FailurePolicy{FailOpen, FailClosed, Local}
	clients := map[FailurePolicy]*Client{}
	hooked := map[DecisionSource]int{}
	var hookMu sync.Mutex
	for _, p := range policies {
		opts := []Option{WithFailurePolicy(p)}
		if p == Local {
			opts = append(opts, WithDecisionHook(func(limit string, d Decision) {
				hookMu.Lock()
				hooked[d.Source]++
				hookMu.Unlock()
			}))
		}
		c, err := New(addr, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		clients[p] = c
	}
	stop := make(chan struct{})
	results := map[FailurePolicy]<-chan []call{}
	for _, p := range policies {
		// "steady": 5 tokens a second, burst 1.
		results[p] = stream(clients[p].Limiter("steady", "k-"+p.String()), stop)
	}
	// The local policy learns the limit from gantry before the outage.
	eventually(t, "the local policy learned the limit", 5*time.Second, func() bool {
		clients[Local].local.mu.Lock()
		defer clients[Local].local.mu.Unlock()
		return clients[Local].local.limits["steady"] != nil
	})
	time.Sleep(200 * time.Millisecond)
	if err := server.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	killed := time.Now()
	time.Sleep(1500 * time.Millisecond)
	restarted := time.Now()
	runGantry(t, addr, data, nil)
	for _, p := range policies {
		c := clients[p]
		eventually(t, p.String()+" decisions by gantry again, with the same client", 10*time.Second, func() bool {
			return c.Decisions().Server > 0 && lastServerDecisionAfter(c, restarted)
		})
	}
	close(stop)

	for _, p := range policies {
		calls := <-results[p]
		var during []call
		for _, c := range calls {
			if c.err != nil {
				t.Fatalf("%s: a call failed instead of answering by the policy: %v", p, c.err)
			}
			if c.took > 350*time.Millisecond {
				t.Fatalf("%s: a call took %v, past its 300 ms deadline", p, c.took)
			}
			if c.at.After(killed.Add(100*time.Millisecond)) && c.at.Before(restarted) {
				during = append(during, c)
			}
		}
		if len(during) < 50 {
			t.Fatalf("%s: only %d calls during the outage", p, len(during))
		}
		took := make([]time.Duration, 0, len(during))
		allowed := 0
		for _, c := range during {
			took = append(took, c.took)
			d := c.decision
			switch p {
			case FailOpen:
				if !d.Allowed || d.Source != FromFailOpen {
					t.Fatalf("fail_open during the outage: %+v", d)
				}
			case FailClosed:
				if d.Allowed || d.Source != FromFailClosed || !strings.Contains(d.Reason, "gantry unreachable") {
					t.Fatalf("fail_closed during the outage: %+v", d)
				}
			case Local:
				if d.Source != FromLocal {
					t.Fatalf("local during the outage: %+v", d)
				}
			}
			if d.Allowed {
				allowed++
			}
		}
		if p == Local {
			// burst 1 + 5 a second over the outage, no more; and some.
			bound := 1 + int(5*restarted.Sub(killed).Seconds()) + 1
			if allowed == 0 || allowed > bound {
				t.Fatalf("local: %d allowed during the outage, want 1..%d", allowed, bound)
			}
		}
		// The breaker makes the policy's answers cost microseconds, not a timeout.
		sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
		if median := took[len(took)/2]; median > 2*time.Millisecond {
			t.Fatalf("%s: median answer during the outage took %v", p, median)
		}
		counts := clients[p].Decisions()
		if counts.Server == 0 || counts.Server+counts.FailOpen+counts.FailClosed+counts.Local != uint64(len(calls)) {
			t.Fatalf("%s: counts %+v for %d calls", p, counts, len(calls))
		}
	}
	hookMu.Lock()
	defer hookMu.Unlock()
	local := clients[Local].Decisions()
	if hooked[FromServer] != int(local.Server) || hooked[FromLocal] != int(local.Local) || local.Local == 0 {
		t.Fatalf("the hook saw %v, the counters %+v", hooked, local)
	}
}

// lastServerDecisionAfter says whether c's limiter got a decision from gantry
// after t (the counters only grow, so a fresh call tells).
func lastServerDecisionAfter(c *Client, after time.Time) bool {
	if time.Now().Before(after) {
		return false
	}
	before := c.Decisions().Server
	time.Sleep(50 * time.Millisecond)
	return c.Decisions().Server > before
}

func TestListOfEndpointsLosesOneReplicaWithoutAFailedCall(t *testing.T) {
	_, a := runGantry(t, "127.0.0.1:0", filepath.Join(t.TempDir(), "a"), nil)
	serverB, b := runGantry(t, "127.0.0.1:0", filepath.Join(t.TempDir(), "b"), nil)
	c, err := New(a+","+b, WithFailurePolicy(FailClosed))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	// Each replica has its own "tight" bucket (burst 2, sled each): four
	// tokens at once are only there if the calls are spread over both.
	// (A new key each round: once both connections are up, the round is spread.)
	round := 0
	eventually(t, "four tokens from two replicas' buckets of two", 5*time.Second, func() bool {
		round++
		key := "spread-" + strings.Repeat("x", round)
		granted := 0
		for i := 0; i < 4; i++ {
			if d, err := c.Limiter("tight", key).Acquire(ctx, 1); err == nil && d.Allowed && d.Source == FromServer {
				granted++
			}
		}
		return granted == 4
	})

	stop := make(chan struct{})
	limited := stream(c.Limiter("steady", "both"), stop)
	reads := make(chan error, 1)
	go func() {
		// Idempotent calls are retried on the other replica: none fails.
		for {
			select {
			case <-stop:
				reads <- nil
				return
			case <-time.After(2 * time.Millisecond):
			}
			if _, _, _, err := c.Namespace("n").Get(ctx, "k"); err != nil {
				reads <- err
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	if err := serverB.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	time.Sleep(time.Second)
	close(stop)
	if err := <-reads; err != nil {
		t.Fatalf("a read failed when one replica was killed: %v", err)
	}
	calls := <-limited
	after := 0
	for _, call := range calls {
		if call.err != nil {
			t.Fatalf("a limiter call failed: %v", call.err)
		}
		// Once gRPC has seen the replica go, every decision is the live one's.
		if call.at.After(killed.Add(100 * time.Millisecond)) {
			after++
			if call.decision.Source != FromServer {
				t.Fatalf("%v after the kill: decided by %s (%s)", call.at.Sub(killed), call.decision.Source, call.decision.Reason)
			}
		}
	}
	if after < 3 { // "steady" grants 5 a second, each call waiting its turn
		t.Fatalf("only %d limiter calls after the kill", after)
	}
}

func TestLeaseIsReportedLostBeforeItExpires(t *testing.T) {
	server, addr := runGantry(t, "127.0.0.1:0", filepath.Join(t.TempDir(), "data"), nil)
	c := connect(t, addr)
	lease, err := c.AcquireLease(context.Background(), "db", "pod-outage", 1, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := server.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lease.Lost():
	case <-time.After(3 * time.Second):
		t.Fatal("the lease was never reported lost")
	}
	if now := time.Now(); !now.Before(lease.ExpiresAt()) {
		t.Fatalf("reported lost %v after its expiry", now.Sub(lease.ExpiresAt()))
	}
	if err := lease.LostErr(); err == nil || !strings.Contains(err.Error(), "not renewed before its expiry") {
		t.Fatalf("LostErr: %v", err)
	}
}

func TestNearCacheServesBoundedStaleDuringAnOutageThenResyncs(t *testing.T) {
	addr, data := freeAddr(t), filepath.Join(t.TempDir(), "data")
	server, _ := runGantry(t, addr, data, nil)
	c := connect(t, addr)
	ctx := context.Background()
	ns := c.Namespace("carts")
	near := ns.NearCache(ctx, "", 100, WithMaxStale(700*time.Millisecond))
	defer near.Close()
	if _, err := ns.Put(ctx, "cart:1", []byte("v1"), 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the value held locally", 5*time.Second, func() bool {
		v, ok, err := near.Get(ctx, "cart:1")
		return err == nil && ok && string(v) == "v1" && near.Len() == 1
	})
	if err := server.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	time.Sleep(100 * time.Millisecond)
	if v, ok, err := near.Get(ctx, "cart:1"); err != nil || !ok || string(v) != "v1" {
		t.Fatalf("within max_stale the held value answers: %q %v %v", v, ok, err)
	}
	time.Sleep(700*time.Millisecond - time.Since(killed) + 50*time.Millisecond)
	if near.Len() != 0 {
		t.Fatal("entries held past max_stale while the stream is down")
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, _, err := near.Get(short, "cart:1"); err == nil {
		t.Fatal("past max_stale a read goes to gantry, which is down")
	}
	runGantry(t, addr, data, nil)
	// gantry is back (sled kept the value): the near cache resyncs and holds it again.
	writer := connect(t, addr)
	if _, err := writer.Namespace("carts").Put(ctx, "cart:1", []byte("v2"), 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "live again after the restart", 10*time.Second, func() bool {
		v, ok, err := near.Get(ctx, "cart:1")
		return err == nil && ok && string(v) == "v2" && near.Len() == 1
	})
	if _, err := writer.Namespace("carts").Put(ctx, "cart:1", []byte("v3"), 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the watch follows writes again", 5*time.Second, func() bool {
		v, ok, _ := near.Get(ctx, "cart:1")
		return ok && string(v) == "v3"
	})
}

// A dns:/// name is resolved by gRPC and balanced over what it resolves to
// (localhost may also give ::1, where nothing listens: round-robin skips it).
func TestDNSNameTarget(t *testing.T) {
	_, addr := runGantry(t, "127.0.0.1:0", filepath.Join(t.TempDir(), "data"), nil)
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New("dns:///localhost:" + port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 10; i++ {
		if _, err := c.RateLimiter.ListLimits(context.Background(), &gantryv1.ListLimitsRequest{}); err != nil {
			t.Fatalf("call %d through dns:///localhost: %v", i, err)
		}
	}
}
