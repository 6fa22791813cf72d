package gantry

import (
	"context"
	"errors"
	"fmt"
	"time"

	gantryv1 "github.com/gantry/gantry/clients/go/gen/gantry/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Decision is a rate-limit answer.
type Decision struct {
	Allowed    bool
	Remaining  uint64
	RetryAfter time.Duration
	ResetAfter time.Duration
	Waited     time.Duration
	// Source says who decided: gantry, or the failure policy when gantry
	// did not answer.
	Source DecisionSource
	// Reason says why the policy decided (e.g. "gantry unreachable: …").
	Reason string
}

// Limiter takes tokens from one of gantry's limits for one key; the whole
// fleet shares the bucket. Make one per (limit, key) or pass keys to AcquireKey.
type Limiter struct {
	client *Client
	Limit  string
	Key    string
	// Client names the caller so that waiting grants rotate fairly between callers.
	Client string
	// Policy is what the limiter answers when gantry does not (the
	// client's WithFailurePolicy, FailOpen unless told).
	Policy FailurePolicy
}

// Limiter returns a limiter for limit and key.
func (c *Client) Limiter(limit, key string) *Limiter {
	return &Limiter{client: c, Limit: limit, Key: key, Policy: c.policy}
}

// Acquire takes tokens now, or waits in the bucket's fair queue until they
// accrue or ctx's deadline nears: the wait ends just before the deadline with
// Allowed false, never with an error. Without a deadline it does not wait.
func (l *Limiter) Acquire(ctx context.Context, tokens uint64) (Decision, error) {
	return l.AcquireKey(ctx, l.Key, tokens)
}

// AcquireKey is Acquire for another key of the same limit.
func (l *Limiter) AcquireKey(ctx context.Context, key string, tokens uint64) (Decision, error) {
	req := &gantryv1.AcquireRequest{Limit: l.Limit, Key: key, Tokens: tokens, Client: l.Client}
	if dl, ok := ctx.Deadline(); ok {
		// gantry keeps its own margin before the call's deadline.
		req.MaxWait = durationpb.New(time.Until(dl))
	}
	resp, err := l.client.RateLimiter.Acquire(ctx, req)
	var d Decision
	switch {
	case err == nil:
		d = Decision{
			Allowed:    resp.GetAllowed(),
			Remaining:  resp.GetRemaining(),
			RetryAfter: resp.GetRetryAfter().AsDuration(),
			ResetAfter: resp.GetResetAfter().AsDuration(),
			Waited:     resp.GetWaited().AsDuration(),
		}
		if l.Policy == Local && l.client.local.needsLearning(l.Limit, time.Now()) {
			go l.client.learnLimits()
		}
	case unanswered(err) && !errors.Is(ctx.Err(), context.Canceled) && !waitedToItsDeadline(req, err):
		d = l.client.local.fallback(l.Policy, l.Limit, key, tokens, l.client.share, l.client.breaker.remaining(), err)
	default:
		return Decision{}, err
	}
	l.client.local.count(l.Limit, d)
	return d, nil
}

// learnLimits asks gantry for the limits' parameters, for the Local policy.
func (c *Client) learnLimits() {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	if resp, err := c.RateLimiter.ListLimits(ctx, &gantryv1.ListLimitsRequest{}); err == nil {
		c.local.learn(resp)
	}
}

// waitSlice is how long one wait in the bucket's queue lasts when ctx has no
// deadline; Wait then queues again, until granted or ctx is cancelled.
const waitSlice = 30 * time.Second

// Wait blocks until one token is granted, as x/time/rate's Wait does: without
// a deadline it waits as long as it takes (or until ctx is cancelled); with one
// it returns ErrNotGranted when the deadline nears first (an error that is
// also context.DeadlineExceeded when the deadline itself ended the wait).
func (l *Limiter) Wait(ctx context.Context) error {
	for {
		attempt, cancel := ctx, context.CancelFunc(func() {})
		if _, ok := ctx.Deadline(); !ok {
			attempt, cancel = context.WithTimeout(ctx, waitSlice)
		}
		d, err := l.Acquire(attempt, 1)
		cancel()
		switch {
		case err == nil && d.Allowed:
			return nil
		case err == nil && d.Source != FromServer:
			// The policy denied without waiting: wait its retry-after
			// (never past the deadline), then ask again.
			if err := pause(ctx, d); err != nil {
				return err
			}
			continue
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			// The server answers "not granted" just as the caller's deadline
			// ends, so which of the two the client sees first is a race: both
			// mean the token did not come in time.
			return fmt.Errorf("%w before the deadline: %w", ErrNotGranted, context.DeadlineExceeded)
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			return err
		}
		if _, ok := ctx.Deadline(); ok {
			return fmt.Errorf("%w before the deadline (retry after %v)", ErrNotGranted, d.RetryAfter)
		}
	}
}

// pause sleeps d.RetryAfter, or returns ErrNotGranted when ctx's deadline
// comes first (or ctx's error when it is cancelled meanwhile).
func pause(ctx context.Context, d Decision) error {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d.RetryAfter {
		return fmt.Errorf("%w before the deadline (%s; retry after %v)", ErrNotGranted, d.Source, d.RetryAfter)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(max(d.RetryAfter, 10*time.Millisecond)):
		return nil
	}
}

// Do runs f once a token is granted: the decorator form of Wait.
func (l *Limiter) Do(ctx context.Context, f func(context.Context) error) error {
	if err := l.Wait(ctx); err != nil {
		return err
	}
	return f(ctx)
}
