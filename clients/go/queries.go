package gantry

import (
	"context"
	"time"

	gantryv1 "github.com/gantry/gantry/clients/go/gen/gantry/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// QueryOrder is how TopQueries ranks fingerprints.
type QueryOrder = gantryv1.QueryOrder

// The orders TopQueries knows; the zero value is OrderByTotalTime.
const (
	OrderByTotalTime = gantryv1.QueryOrder_QUERY_ORDER_TOTAL_TIME
	OrderByMeanTime  = gantryv1.QueryOrder_QUERY_ORDER_MEAN_TIME
	OrderByP99       = gantryv1.QueryOrder_QUERY_ORDER_P99
	OrderByCalls     = gantryv1.QueryOrder_QUERY_ORDER_CALLS
	OrderByRows      = gantryv1.QueryOrder_QUERY_ORDER_ROWS
)

// TopQueriesOptions narrows TopQueries; the zero value is the 20 heaviest
// fingerprints of the whole fleet by total time.
type TopQueriesOptions struct {
	OrderBy QueryOrder
	Limit   uint32
	Service string
}

// QueryStats is one fingerprint's statistics.
type QueryStats struct {
	Fingerprint string
	Service     string
	// Sample is the normalized text (raw only when the server keeps raw samples).
	Sample                        string
	Calls, Rows                   uint64
	Total, Mean, Min, Max, Stddev time.Duration
	P50, P95, P99                 time.Duration
	FirstSeen, LastSeen           time.Time
	Batching                      *BatchingHint
}

// BatchingHint is set when a statement ran many times in one trace (N+1).
type BatchingHint struct {
	MaxPerTrace, Occurrences uint64
	Suggestion               string
}

// SlowQuery is one execution over the slow threshold.
type SlowQuery struct {
	Fingerprint, Text, Service, TraceID string
	Duration                            time.Duration
	Rows                                uint64
	Time                                time.Time
}

// TopQueries reads back the heaviest statements recorded.
func (c *Client) TopQueries(ctx context.Context, opts TopQueriesOptions) ([]QueryStats, error) {
	resp, err := c.Query.TopQueries(ctx, &gantryv1.TopQueriesRequest{OrderBy: opts.OrderBy, Limit: opts.Limit, Service: opts.Service})
	if err != nil {
		return nil, err
	}
	out := make([]QueryStats, 0, len(resp.GetQueries()))
	for _, q := range resp.GetQueries() {
		s := QueryStats{
			Fingerprint: q.GetFingerprint(), Service: q.GetService(), Sample: q.GetSample(),
			Calls: q.GetCalls(), Rows: q.GetRows(),
			Total: q.GetTotal().AsDuration(), Mean: q.GetMean().AsDuration(), Min: q.GetMin().AsDuration(),
			Max: q.GetMax().AsDuration(), Stddev: q.GetStddev().AsDuration(),
			P50: q.GetP50().AsDuration(), P95: q.GetP95().AsDuration(), P99: q.GetP99().AsDuration(),
			FirstSeen: q.GetFirstSeen().AsTime(), LastSeen: q.GetLastSeen().AsTime(),
		}
		if b := q.GetBatching(); b != nil {
			s.Batching = &BatchingHint{MaxPerTrace: b.GetMaxPerTrace(), Occurrences: b.GetOccurrences(), Suggestion: b.GetSuggestion()}
		}
		out = append(out, s)
	}
	return out, nil
}

// SlowQueries reads back executions over the slow threshold, newest first:
// those at or after since (zero: all that are kept), at most limit (0: 50).
func (c *Client) SlowQueries(ctx context.Context, since time.Time, limit uint32) ([]SlowQuery, error) {
	req := &gantryv1.SlowQueriesRequest{Limit: limit}
	if !since.IsZero() {
		req.Since = timestamppb.New(since)
	}
	resp, err := c.Query.SlowQueries(ctx, req)
	if err != nil {
		return nil, err
	}
	out := make([]SlowQuery, 0, len(resp.GetQueries()))
	for _, q := range resp.GetQueries() {
		out = append(out, SlowQuery{
			Fingerprint: q.GetFingerprint(), Text: q.GetText(), Service: q.GetService(), TraceID: q.GetTraceId(),
			Duration: q.GetDuration().AsDuration(), Rows: q.GetRows(), Time: q.GetTime().AsTime(),
		})
	}
	return out, nil
}
