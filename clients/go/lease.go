package gantry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	gantryv1 "github.com/gantry/gantry/clients/go/gen/gantry/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Lease holds units of a global budget (a pool) and renews itself at a third
// of its TTL until Release. If it cannot be renewed (gantry unreachable until
// just before the expiry, or the lease gone), Lost is closed before the units
// return: stop using them.
//
//	lease, err := client.AcquireLease(ctx, "orders-db", hostname, 10, 30*time.Second)
//	if err != nil { ... }
//	defer lease.Release(context.Background())
type Lease struct {
	client *Client
	ID     string
	Pool   string
	Count  uint32

	ttl      time.Duration
	lost     chan struct{}
	stop     chan struct{}
	done     chan struct{}
	release  sync.Once
	stopOnce sync.Once
	mu       sync.Mutex
	expires  time.Time
	lostErr  error
	lostOnce sync.Once
}

// AcquireLease leases count units of pool for holder, waiting fairly for them
// until ctx's deadline (without a deadline it does not wait). ttl 0 means the
// pool's default. ErrNotGranted when the wait ran out.
func (c *Client) AcquireLease(ctx context.Context, pool, holder string, count uint32, ttl time.Duration) (*Lease, error) {
	req := &gantryv1.AcquireLeaseRequest{Pool: pool, Holder: holder, Count: count}
	if ttl > 0 {
		req.Ttl = durationpb.New(ttl)
	}
	if dl, ok := ctx.Deadline(); ok {
		req.MaxWait = durationpb.New(time.Until(dl))
	}
	resp, err := c.Leases.Acquire(ctx, req)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		// The server's "not granted" and the caller's deadline end together;
		// whichever arrives first, the units did not come in time.
		return nil, fmt.Errorf("%w: %d units of %s before the deadline: %w", ErrNotGranted, count, pool, context.DeadlineExceeded)
	}
	if err != nil {
		return nil, err
	}
	if !resp.GetGranted() {
		when := "now (no deadline, so no wait)"
		if _, ok := ctx.Deadline(); ok {
			when = "before the deadline"
		}
		return nil, fmt.Errorf("%w: %d units of %s %s%s", ErrNotGranted, count, pool, when, denialText(resp.GetDenialReason(), holder))
	}
	expires := resp.GetExpiresAt().AsTime()
	if ttl <= 0 {
		ttl = time.Until(expires)
	}
	l := &Lease{
		client:  c,
		ID:      resp.GetLeaseId(),
		Pool:    resp.GetPool(),
		Count:   resp.GetCount(),
		ttl:     ttl,
		lost:    make(chan struct{}),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		expires: expires,
	}
	if !c.own(l, func(context.Context) { l.stopRenewing() }) {
		close(l.done) // the client closed meanwhile: nothing renews it
		return l, nil
	}
	go l.renew()
	return l, nil
}

// ExpiresAt is when the units return unless renewed.
func (l *Lease) ExpiresAt() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.expires
}

// Lost is closed when the lease can no longer be counted on: renewals kept
// failing until a margin before its expiry (a tenth of the TTL, between
// 50 ms and 5 s), so the application hears of it while the units are still
// its own; or gantry no longer knows the lease. LostErr says why.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// LostErr is the last renewal's error once Lost is closed (nil before).
func (l *Lease) LostErr() error {
	select {
	case <-l.lost:
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.lostErr
	default:
		return nil
	}
}

// lostMargin is how long before its expiry a lease that could not be
// renewed is reported lost.
func lostMargin(ttl time.Duration) time.Duration {
	return min(max(ttl/10, 50*time.Millisecond), 5*time.Second)
}

func (l *Lease) renew() {
	defer close(l.done)
	every := max(l.ttl/3, 100*time.Millisecond)
	again := max(l.ttl/10, 50*time.Millisecond) // after a failed renewal
	margin := lostMargin(l.ttl)
	next := time.Now().Add(every)
	var lastErr error
	for {
		lostAt := l.ExpiresAt().Add(-margin)
		wake := time.NewTimer(min(time.Until(next), time.Until(lostAt)))
		select {
		case <-l.stop:
			wake.Stop()
			return
		case <-wake.C:
		}
		if !time.Now().Before(lostAt) {
			if lastErr == nil {
				lastErr = errors.New("no renewal was answered")
			}
			l.markLost(fmt.Errorf("gantry: lease %s of %s not renewed before its expiry: %w", l.ID, l.Pool, lastErr))
			return
		}
		ctx, cancel := context.WithDeadline(context.Background(), lostAt)
		resp, err := l.client.Leases.Renew(ctx, &gantryv1.RenewLeaseRequest{LeaseId: l.ID, Ttl: durationpb.New(l.ttl)})
		cancel()
		switch {
		case err == nil:
			l.mu.Lock()
			l.expires = resp.GetExpiresAt().AsTime()
			l.mu.Unlock()
			next = time.Now().Add(every)
		case isNotFound(err):
			l.markLost(err)
			return
		default:
			lastErr = err
			next = time.Now().Add(again)
		}
	}
}

func (l *Lease) markLost(err error) {
	l.lostOnce.Do(func() {
		l.mu.Lock()
		l.lostErr = err
		l.mu.Unlock()
		close(l.lost)
	})
}

// Release returns the units at once and stops renewing; ctx bounds the call
// (without a deadline, the client's timeout). Safe to call more than once.
func (l *Lease) Release(ctx context.Context) error {
	var err error
	l.release.Do(func() {
		l.client.forget(l)
		l.stopRenewing()
		_, err = l.client.Leases.Release(ctx, &gantryv1.ReleaseLeaseRequest{LeaseId: l.ID})
	})
	return err
}

// stopRenewing ends the renewals (Release, or the client's Close).
func (l *Lease) stopRenewing() {
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.done
}

// denialText says why the server refused, as its answer tells.
func denialText(reason gantryv1.DenialReason, holder string) string {
	switch reason {
	case gantryv1.DenialReason_DENIAL_REASON_POOL_FULL:
		return " (the pool is full)"
	case gantryv1.DenialReason_DENIAL_REASON_HOLDER_LIMIT:
		return fmt.Sprintf(" (holder %s is at the pool's max_per_holder)", holder)
	case gantryv1.DenialReason_DENIAL_REASON_QUEUE_AHEAD:
		return " (callers that came first are waiting)"
	default:
		return ""
	}
}
