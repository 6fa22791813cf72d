package gantry

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	gantryv1 "github.com/gantry/gantry/clients/go/gen/gantry/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// testConfig is the configuration every client's tests share.
const testConfig = "../testdata/gantry.toml"

// gantryBin is the server binary: GANTRY_BIN, or the one `cargo test` built.
func gantryBin(t *testing.T) string {
	if bin := os.Getenv("GANTRY_BIN"); bin != "" {
		return bin
	}
	bin, _ := filepath.Abs("../../target/debug/gantry")
	if _, err := os.Stat(bin); err != nil {
		t.Skip("no gantry binary: run cargo build, or set GANTRY_BIN")
	}
	return bin
}

// startGantry runs a real gantry on 127.0.0.1 and returns its gRPC address.
func startGantry(t *testing.T, listen string) string {
	return startGantryWith(t, listen, nil)
}

// startGantryWith is startGantry with extra environment (GANTRY_* keys).
func startGantryWith(t *testing.T, listen string, env []string) string {
	t.Helper()
	_, addr := runGantry(t, listen, filepath.Join(t.TempDir(), "data"), env)
	return addr
}

// runGantry starts gantry on listen with its data in dataDir and returns the
// process (for tests that kill it) and its gRPC address.
func runGantry(t *testing.T, listen, dataDir string, env []string) (*exec.Cmd, string) {
	t.Helper()
	config, err := filepath.Abs(testConfig)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(gantryBin(t), "serve", "--config", config, "--listen", listen,
		"--metrics-listen", "127.0.0.1:0", "--otlp-http-listen", "127.0.0.1:0", "--data-dir", dataDir)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		scanner := bufio.NewScanner(stderr)
		for scanner.Scan() {
			line := scanner.Text()
			if i := strings.Index(line, "grpc="); i >= 0 && strings.Contains(line, "gantry listening") {
				addr <- strings.Fields(line[i+len("grpc="):])[0]
			}
		}
	}()
	select {
	case a := <-addr:
		return cmd, a
	case <-time.After(20 * time.Second):
		t.Fatal("gantry did not start")
		return nil, ""
	}
}

func connect(t *testing.T, addr string) *Client {
	t.Helper()
	c, err := New(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestLimiterTakesWaitsAndRefuses(t *testing.T) {
	c := connect(t, startGantry(t, "127.0.0.1:0"))
	ctx := context.Background()
	tight := c.Limiter("tight", "customer-1")
	for i := 0; i < 2; i++ {
		d, err := tight.Acquire(ctx, 1)
		if err != nil || !d.Allowed {
			t.Fatalf("acquire %d: %+v %v", i, d, err)
		}
	}
	// No deadline: no wait; the burst of 2 is spent.
	d, err := tight.Acquire(ctx, 1)
	if err != nil || d.Allowed || d.RetryAfter <= 0 {
		t.Fatalf("third acquire should be refused with a retry_after: %+v %v", d, err)
	}
	// A deadline shorter than the refill: Wait says not granted, not an error from gRPC.
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := tight.Wait(short); !errors.Is(err, ErrNotGranted) {
		t.Fatalf("want ErrNotGranted, got %v", err)
	}
	// No deadline: Wait blocks until the token comes (about 1 s), as x/time/rate does.
	started := time.Now()
	if err := tight.Wait(ctx); err != nil {
		t.Fatalf("Wait without a deadline: %v", err)
	}
	if waited := time.Since(started); waited < 100*time.Millisecond {
		t.Fatalf("Wait without a deadline returned after %v, before a token could accrue", waited)
	}
	// A cancelled context ends the wait with its error.
	cancelled, stop := context.WithCancel(ctx)
	go func() { time.Sleep(100 * time.Millisecond); stop() }()
	if err := tight.Wait(cancelled); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	// 5 per second, burst 1: the second call waits about 200 ms for its token.
	steady := c.Limiter("steady", "k")
	wait, cancel2 := context.WithTimeout(ctx, 3*time.Second)
	defer cancel2()
	ran := 0
	for i := 0; i < 2; i++ {
		if err := steady.Do(wait, func(context.Context) error { ran++; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if ran != 2 {
		t.Fatalf("Do ran %d times", ran)
	}
	d, err = steady.Acquire(wait, 1)
	if err != nil || !d.Allowed || d.Waited < 100*time.Millisecond {
		t.Fatalf("a waiting acquire should be granted after a wait: %+v %v", d, err)
	}
	_, err = c.Limiter("nope", "k").Acquire(ctx, 1)
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("unknown limit: %v", err)
	}
}

func TestLeaseRenewsItselfAndReleases(t *testing.T) {
	c := connect(t, startGantry(t, "127.0.0.1:0"))
	ctx := context.Background()
	lease, err := c.AcquireLease(ctx, "db", "pod-a", 2, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	first := lease.ExpiresAt()
	// Well past the 1 s TTL the lease is still held: it renewed itself.
	time.Sleep(2500 * time.Millisecond)
	status, err := c.Leases.PoolStatus(ctx, &gantryv1.PoolStatusRequest{Pool: "db"})
	if err != nil || status.GetInUse() != 2 {
		t.Fatalf("pool status after renewals: %v %v", status, err)
	}
	if !lease.ExpiresAt().After(first) {
		t.Fatal("expiry did not move forward")
	}
	select {
	case <-lease.Lost():
		t.Fatal("lease reported lost")
	default:
	}
	// The pool is full: a call without a deadline is told so at once...
	if _, err := c.AcquireLease(ctx, "db", "pod-b", 1, 0); !errors.Is(err, ErrNotGranted) ||
		!strings.Contains(err.Error(), "(the pool is full)") {
		t.Fatalf("want ErrNotGranted saying the pool is full, got %v", err)
	}
	// ...and another holder waits until its deadline, then gives up.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := c.AcquireLease(short, "db", "pod-b", 1, 0); !errors.Is(err, ErrNotGranted) ||
		!strings.Contains(err.Error(), "before the deadline") {
		t.Fatalf("want ErrNotGranted before the deadline, got %v", err)
	}
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := lease.Release(ctx); err != nil {
		t.Fatalf("a second Release: %v", err)
	}
	other, err := c.AcquireLease(ctx, "db", "pod-b", 2, 0)
	if err != nil {
		t.Fatalf("after release the units are free: %v", err)
	}
	defer func() { _ = other.Release(ctx) }()
}

func TestNearCacheFollowsOtherWriters(t *testing.T) {
	addr := startGantry(t, "127.0.0.1:0")
	c := connect(t, addr)
	other := connect(t, addr) // another instance of the service
	ctx := context.Background()
	ns := c.Namespace("carts")
	near := ns.NearCache(ctx, "cart:", 100)
	defer near.Close()

	eventually := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("never: %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if _, err := ns.Put(ctx, "cart:1", []byte("v1"), 0); err != nil {
		t.Fatal(err)
	}
	eventually("the watch is live and the value is held locally", func() bool {
		v, ok, err := near.Get(ctx, "cart:1")
		return err == nil && ok && string(v) == "v1" && near.Len() == 1
	})
	// Another instance writes: the local copy follows through Watch.
	if _, err := other.Namespace("carts").Put(ctx, "cart:1", []byte("v2"), 0); err != nil {
		t.Fatal(err)
	}
	eventually("the new value", func() bool {
		v, ok, _ := near.Get(ctx, "cart:1")
		return ok && string(v) == "v2"
	})
	if deleted, err := other.Namespace("carts").Delete(ctx, "cart:1"); err != nil || !deleted {
		t.Fatalf("delete: %v %v", deleted, err)
	}
	eventually("the delete", func() bool {
		_, ok, _ := near.Get(ctx, "cart:1")
		return !ok && near.Len() == 0
	})
}

func TestRecorderBatchesInTheBackground(t *testing.T) {
	c := connect(t, startGantry(t, "127.0.0.1:0"))
	ctx := context.Background()
	// A batch of 3 goes out at once, long before the (hour-long) interval.
	rec := c.NewRecorder(ctx, "shop", "postgres", WithBatchSize(3), WithFlushInterval(time.Hour))
	for i := 0; i < 3; i++ {
		rec.Record("SELECT * FROM items WHERE id = 42", 3*time.Millisecond, 1, "4bf92f3577b34da6a3ce929d0e0e4736")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		top, err := c.TopQueries(ctx, TopQueriesOptions{Service: "shop"})
		if err == nil && len(top) == 1 && top[0].Calls == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the batch of 3 never arrived: %v %v", top, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := 0; i < 7; i++ {
		rec.Record("SELECT * FROM items WHERE id = 42", 3*time.Millisecond, 1, "4bf92f3577b34da6a3ce929d0e0e4736")
	}
	if err := rec.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if rec.Dropped() != 0 || rec.Failed() != 0 {
		t.Fatalf("dropped %d failed %d", rec.Dropped(), rec.Failed())
	}
	// After Close, Record drops (and says so) instead of panicking.
	if rec.Record("SELECT 1", time.Millisecond, 1, "") || rec.Dropped() != 1 {
		t.Fatalf("Record after Close: dropped %d", rec.Dropped())
	}
	if err := rec.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// A recorder whose context ends sends what it holds and stops.
	short, cancel := context.WithCancel(ctx)
	slow := c.NewRecorder(short, "shop", "postgres")
	slow.Record("SELECT count(*) FROM items", 1500*time.Millisecond, 1, "")
	cancel()
	<-slow.done
	if slow.Record("SELECT 1", time.Millisecond, 1, "") {
		t.Fatal("a recorder whose context ended still takes rows")
	}

	top, err := c.TopQueries(ctx, TopQueriesOptions{Service: "shop", OrderBy: OrderByCalls})
	if err != nil || len(top) != 2 {
		t.Fatalf("top: %v %v", top, err)
	}
	q := top[0]
	if q.Calls != 10 || q.Total != 30*time.Millisecond || q.Batching == nil || q.Batching.MaxPerTrace != 10 ||
		!strings.Contains(q.Sample, "WHERE id = $1") || q.LastSeen.IsZero() {
		t.Fatalf("stats: %+v %+v", q, q.Batching)
	}
	heaviest, err := c.TopQueries(ctx, TopQueriesOptions{Service: "shop", Limit: 1})
	if err != nil || len(heaviest) != 1 || heaviest[0].Total != 1500*time.Millisecond {
		t.Fatalf("by total time (the default): %+v %v", heaviest, err)
	}
	slowest, err := c.SlowQueries(ctx, time.Now().Add(-time.Minute), 5)
	if err != nil || len(slowest) != 1 || slowest[0].Duration != 1500*time.Millisecond || slowest[0].Service != "shop" {
		t.Fatalf("slow queries: %+v %v", slowest, err)
	}
}

func TestErrorsCarryTheCodeAndCloseEndsEverything(t *testing.T) {
	addr := startGantry(t, "127.0.0.1:0")
	c, err := New(addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err = c.Limiter("no-such-limit", "k").Acquire(ctx, 1)
	var gerr *Error
	if !errors.As(err, &gerr) || gerr.Code != codes.NotFound || status.Code(err) != codes.NotFound ||
		!strings.HasPrefix(err.Error(), "gantry: NotFound: ") || !strings.Contains(err.Error(), "no-such-limit") {
		t.Fatalf("want *Error NotFound naming the limit, got %T %v", err, err)
	}
	near := c.Namespace("carts").NearCache(ctx, "", 10)
	lease, err := c.AcquireLease(ctx, "db", "pod-close", 1, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rec := c.NewRecorder(ctx, "close", "")
	rec.Record("SELECT 2", time.Millisecond, 1, "")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// Close flushed the recorder and ended the watch and the renewals.
	select {
	case <-near.done:
	default:
		t.Fatal("the near cache still watches after Close")
	}
	select {
	case <-lease.done:
	default:
		t.Fatal("the lease still renews after Close")
	}
	if rec.Failed() != 0 || rec.Record("SELECT 3", time.Millisecond, 1, "") {
		t.Fatalf("recorder after Close: failed %d", rec.Failed())
	}
	_, _, _, err = c.Namespace("carts").Get(ctx, "k")
	if !errors.Is(err, ErrClosed) || status.Code(err) != codes.Canceled {
		t.Fatalf("a call after Close: want ErrClosed (Canceled), got %v", err)
	}
	if late := c.NewRecorder(ctx, "late", ""); late.Record("SELECT 4", time.Millisecond, 1, "") {
		t.Fatal("a recorder made after Close takes rows")
	}
	if err := c.Close(); err != nil {
		t.Fatalf("a second Close: %v", err)
	}
	check := connect(t, addr)
	top, err := check.TopQueries(ctx, TopQueriesOptions{Service: "close"})
	if err != nil || len(top) != 1 {
		t.Fatalf("the recorder's last batch: %+v %v", top, err)
	}
}

func TestCallsRetryWhileTheServerComesUp(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	started := make(chan struct{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		startGantry(t, addr)
		close(started)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c2, _ := New(addr, WithRetries(8))
	defer c2.Close()
	// ListLimits is idempotent, so it is tried again until gantry is up.
	limits, err := c2.RateLimiter.ListLimits(ctx, &gantryv1.ListLimitsRequest{})
	if err != nil || len(limits.GetLimits()) != 2 {
		t.Fatalf("the call should have been retried until gantry was up: %v %v", limits, err)
	}
	<-started
}

// The generated code must come from the protos as they are now.
// The README's way to use the module from a checkout: require + replace in a
// fresh module, then build a program that calls it.
func TestUsableFromACheckoutWithReplace(t *testing.T) {
	checkout, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	program := "package main\n\nimport gantry \"github.com/gantry/gantry/clients/go\"\n\n" +
		"func main() {\n\tc, err := gantry.New(\"127.0.0.1:1\")\n\tif err != nil {\n\t\tpanic(err)\n\t}\n\t_ = c.Close()\n}\n"
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(program), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"mod", "init", "example.com/my-service"},
		{"mod", "edit", "-require=github.com/gantry/gantry/clients/go@v0.0.0", "-replace=github.com/gantry/gantry/clients/go=" + checkout},
		{"mod", "tidy"},
		{"build", "-o", filepath.Join(dir, "my-service"), "."},
	} {
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %v: %v\n%s", args, err, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "my-service")); err != nil {
		t.Fatalf("no program built: %v", err)
	}
}

func TestGeneratedCodeIsCurrent(t *testing.T) {
	files, err := filepath.Glob("../../proto/gantry/v1/*.proto")
	if err != nil || len(files) == 0 {
		t.Fatalf("protos: %v %v", files, err)
	}
	sort.Strings(files)
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		h.Write(b)
	}
	want, err := os.ReadFile("gen/PROTO_SHA256")
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != strings.TrimSpace(string(want)) {
		t.Fatalf("gen/ is stale: the protos changed since ./generate.sh ran (%s != %s)", got, strings.TrimSpace(string(want)))
	}
}
