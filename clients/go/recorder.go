package gantry

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	gantryv1 "github.com/gantry/gantry/clients/go/gen/gantry/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Recorder sends executed queries to gantry's statistics in the background,
// in batches by size and time. Record never blocks: when the queue is full the
// execution is dropped and counted (statistics are not worth slowing a request).
type Recorder struct {
	client   *Client
	service  string
	dialect  string
	queue    chan *gantryv1.QueryExecution
	batch    int
	interval time.Duration
	dropped  atomic.Uint64
	failed   atomic.Uint64
	close    sync.Once
	done     chan struct{}
	// last bounds the final flush: the context Close was given.
	last context.Context
	// stopWatchingCtx unregisters the Close that NewRecorder's ctx would run.
	stopWatchingCtx func() bool
	// closed guards queue: Record after Close drops (returns false)
	// instead of sending on a closed channel.
	mu     sync.RWMutex
	closed bool
}

// RecorderOption configures NewRecorder.
type RecorderOption func(*Recorder)

// WithBatchSize sends a batch once it holds n executions (default 500).
func WithBatchSize(n int) RecorderOption { return func(r *Recorder) { r.batch = max(n, 1) } }

// WithFlushInterval sends what is queued at least this often (default 1 s).
func WithFlushInterval(d time.Duration) RecorderOption {
	return func(r *Recorder) { r.interval = max(d, 10*time.Millisecond) }
}

// WithQueueSize bounds the executions waiting to be sent (default 10,000);
// Record drops (and counts) beyond it.
func WithQueueSize(n int) RecorderOption {
	return func(r *Recorder) { r.queue = make(chan *gantryv1.QueryExecution, max(n, 1)) }
}

// NewRecorder starts a recorder for service's queries in dialect
// ("postgres", "mysql", "sqlite" or ""). It runs until Close, the client's
// Close, or until ctx ends (then it sends what is queued, within the
// client's timeout, and stops).
func (c *Client) NewRecorder(ctx context.Context, service, dialect string, opts ...RecorderOption) *Recorder {
	r := &Recorder{
		client:   c,
		service:  service,
		dialect:  dialect,
		queue:    make(chan *gantryv1.QueryExecution, 10_000),
		batch:    500,
		interval: time.Second,
		done:     make(chan struct{}),
	}
	for _, opt := range opts {
		opt(r)
	}
	if !c.own(r, func(ctx context.Context) { _ = r.shutDown(ctx) }) {
		r.closed = true // the client is closed: Record refuses
		close(r.done)
		return r
	}
	go r.run()
	// No goroutine waits for ctx: AfterFunc runs Close when it ends (never
	// for a context that cannot end), and Close unregisters it.
	stop := context.AfterFunc(ctx, func() { _ = r.Close(context.Background()) })
	r.mu.Lock() // an ended ctx runs Close at once, on another goroutine
	r.stopWatchingCtx = stop
	r.mu.Unlock()
	return r
}

// Record queues one execution; traceID (32 hex digits) may be empty.
func (r *Recorder) Record(sql string, took time.Duration, rows uint64, traceID string) bool {
	e := &gantryv1.QueryExecution{
		Sql:      sql,
		Dialect:  r.dialect,
		Duration: durationpb.New(took),
		Rows:     rows,
		Service:  r.service,
		TraceId:  traceID,
		Time:     timestamppb.Now(),
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		r.dropped.Add(1)
		return false
	}
	select {
	case r.queue <- e:
		return true
	default:
		r.dropped.Add(1)
		return false
	}
}

// Dropped counts executions dropped because the queue was full; Failed those
// in batches gantry did not take.
func (r *Recorder) Dropped() uint64 { return r.dropped.Load() }
func (r *Recorder) Failed() uint64  { return r.failed.Load() }

func (r *Recorder) run() {
	defer close(r.done)
	ticker := time.NewTicker(r.interval)
	defer ticker.Stop()
	var pending []*gantryv1.QueryExecution
	flush := func(final bool) {
		if len(pending) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.client.timeout)
		if final { // as long as Close's context allows (set before the queue closed)
			cancel()
			ctx, cancel = context.WithCancel(r.last)
		}
		resp, err := r.client.Query.Record(ctx, &gantryv1.RecordRequest{Executions: pending})
		cancel()
		if err != nil {
			r.failed.Add(uint64(len(pending)))
		} else {
			r.failed.Add(uint64(resp.GetRejected()))
		}
		pending = nil
	}
	for {
		select {
		case e, ok := <-r.queue:
			if !ok {
				flush(true)
				return
			}
			pending = append(pending, e)
			if len(pending) >= r.batch {
				flush(false)
			}
		case <-ticker.C:
			flush(false)
		}
	}
}

// Close sends what is queued and stops, waiting for the last batch until ctx
// ends (ctx's error then; what was not sent counts as failed). Record after
// Close drops and returns false. Safe to call more than once.
func (r *Recorder) Close(ctx context.Context) error {
	r.mu.RLock()
	stop := r.stopWatchingCtx
	r.mu.RUnlock()
	if stop != nil {
		stop()
	}
	r.client.forget(r)
	return r.shutDown(ctx)
}

func (r *Recorder) shutDown(ctx context.Context) error {
	r.close.Do(func() {
		r.mu.Lock()
		if !r.closed {
			r.closed = true
			r.last = ctx
			close(r.queue)
		}
		r.mu.Unlock()
	})
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
