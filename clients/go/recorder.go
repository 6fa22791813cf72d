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
	// closed guards queue: Record after Close drops (returns false)
	// instead of sending on a closed channel.
	mu     sync.RWMutex
	closed bool
}

// NewRecorder starts a recorder for service's queries in dialect
// ("postgres", "mysql", "sqlite" or "").
func (c *Client) NewRecorder(service, dialect string) *Recorder {
	r := &Recorder{
		client:   c,
		service:  service,
		dialect:  dialect,
		queue:    make(chan *gantryv1.QueryExecution, 10_000),
		batch:    500,
		interval: time.Second,
		done:     make(chan struct{}),
	}
	go r.run()
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
	flush := func() {
		if len(pending) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.client.timeout)
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
				flush()
				return
			}
			pending = append(pending, e)
			if len(pending) >= r.batch {
				flush()
			}
		case <-ticker.C:
			flush()
		}
	}
}

// Close sends what is queued and stops. Record must not be called after Close.
func (r *Recorder) Close() {
	r.close.Do(func() {
		r.mu.Lock()
		r.closed = true
		close(r.queue)
		r.mu.Unlock()
		<-r.done
	})
}
