package gantry

import (
	"context"
	"sync"
	"time"

	gantryv1 "github.com/gantry/gantry/clients/go/gen/gantry/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Namespace is one namespace of the shared cache.
type Namespace struct {
	client *Client
	Name   string
}

// Namespace returns the cache namespace name.
func (c *Client) Namespace(name string) *Namespace { return &Namespace{client: c, Name: name} }

// Get reads a key; found is false for a missing or expired key.
func (n *Namespace) Get(ctx context.Context, key string) (value []byte, version uint64, found bool, err error) {
	resp, err := n.client.Cache.Get(ctx, &gantryv1.GetRequest{Namespace: n.Name, Key: key})
	if err != nil {
		return nil, 0, false, err
	}
	return resp.GetValue(), resp.GetVersion(), resp.GetFound(), nil
}

// Put writes a key (ttl 0: no expiry) and returns its new version.
func (n *Namespace) Put(ctx context.Context, key string, value []byte, ttl time.Duration) (uint64, error) {
	req := &gantryv1.PutRequest{Namespace: n.Name, Key: key, Value: value}
	if ttl > 0 {
		req.Ttl = durationpb.New(ttl)
	}
	resp, err := n.client.Cache.Put(ctx, req)
	if err != nil {
		return 0, err
	}
	return resp.GetVersion(), nil
}

// Delete removes a key; deleted is false when it did not exist.
func (n *Namespace) Delete(ctx context.Context, key string) (bool, error) {
	resp, err := n.client.Cache.Delete(ctx, &gantryv1.DeleteRequest{Namespace: n.Name, Key: key})
	if err != nil {
		return false, err
	}
	return resp.GetDeleted(), nil
}

// NearCache keeps recently read keys of a namespace in process and coherent
// with the shared cache through Watch: puts, deletes and expiries from any
// instance update or drop the local copy; a RESYNC (this watcher fell
// behind) clears it. While the stream is down it keeps answering from what
// it holds for at most its max staleness (WithMaxStale, default 5 s), then
// drops everything and reads go to gantry; when the stream is back it starts
// empty (a resync).
type NearCache struct {
	ns       *Namespace
	max      int
	maxStale time.Duration
	mu       sync.Mutex
	items    map[string]nearItem
	gen      uint64 // bumped by every event: a read that raced one is not kept
	live     bool
	downAt   time.Time // when the stream broke (zero while live)
	cancel   context.CancelFunc
	done     chan struct{}
}

// NearCacheOption configures a NearCache.
type NearCacheOption func(*NearCache)

// WithMaxStale bounds how long the near cache answers from what it holds
// while its Watch stream is down (it cannot hear of changes then); 0 drops
// everything as soon as the stream breaks. Default 5 s.
func WithMaxStale(d time.Duration) NearCacheOption {
	return func(nc *NearCache) { nc.maxStale = max(d, 0) }
}

type nearItem struct {
	value   []byte
	version uint64
}

// NearCache starts watching keys with prefix ("" for all) and keeps up to
// maxEntries of them locally. It watches until Close, the client's Close or
// the end of ctx; then reads go to gantry.
func (n *Namespace) NearCache(ctx context.Context, prefix string, maxEntries int, opts ...NearCacheOption) *NearCache {
	ctx, cancel := context.WithCancel(ctx)
	nc := &NearCache{ns: n, max: max(maxEntries, 1), maxStale: 5 * time.Second, items: map[string]nearItem{},
		cancel: cancel, done: make(chan struct{})}
	for _, opt := range opts {
		opt(nc)
	}
	if !n.client.own(nc, func(context.Context) { nc.stop() }) {
		cancel() // the client is closed
		close(nc.done)
		return nc
	}
	go nc.watch(ctx, prefix)
	return nc
}

func (nc *NearCache) watch(ctx context.Context, prefix string) {
	defer close(nc.done)
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		stream, err := nc.ns.client.Cache.Watch(ctx, &gantryv1.WatchRequest{Namespace: nc.ns.Name, KeyPrefix: prefix, IncludeValues: true})
		// The server answers with headers once it has subscribed: from then
		// on every change reaches us, so local copies stay coherent.
		if err == nil {
			if _, err = stream.Header(); err == nil {
				nc.resync()
			}
		}
		if err == nil {
			for {
				ev, err := stream.Recv()
				if err != nil {
					break
				}
				nc.apply(ev)
				backoff = 50 * time.Millisecond
			}
		}
		nc.down()
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (nc *NearCache) apply(ev *gantryv1.WatchEvent) {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	nc.gen++
	switch ev.GetKind() {
	case gantryv1.WatchEvent_KIND_PUT:
		if old, ok := nc.items[ev.GetKey()]; ok && old.version < ev.GetVersion() {
			nc.items[ev.GetKey()] = nearItem{value: ev.GetValue(), version: ev.GetVersion()}
		}
	case gantryv1.WatchEvent_KIND_DELETE, gantryv1.WatchEvent_KIND_EXPIRE:
		delete(nc.items, ev.GetKey())
	case gantryv1.WatchEvent_KIND_RESYNC:
		clear(nc.items)
	}
}

// resync starts over when the stream is (back) up: anything may have
// changed while it was down.
func (nc *NearCache) resync() {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	nc.gen++
	nc.live, nc.downAt = true, time.Time{}
	clear(nc.items)
}

// down notes that the stream broke: what is held stays answerable for
// maxStale (see expireStale).
func (nc *NearCache) down() {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	nc.gen++
	if nc.live {
		nc.live, nc.downAt = false, time.Now()
	}
	nc.expireStale()
}

// expireStale drops what is held once the stream has been down longer
// than maxStale. Called with mu held.
func (nc *NearCache) expireStale() {
	if !nc.live && len(nc.items) > 0 && (nc.downAt.IsZero() || time.Since(nc.downAt) >= nc.maxStale) {
		clear(nc.items)
	}
}

// Get answers from the local copy when it has one, else reads gantry (and
// keeps the value when the watch is live and no event raced the read).
func (nc *NearCache) Get(ctx context.Context, key string) ([]byte, bool, error) {
	nc.mu.Lock()
	nc.expireStale()
	item, ok := nc.items[key]
	gen, live := nc.gen, nc.live
	nc.mu.Unlock()
	if ok {
		return item.value, true, nil
	}
	value, version, found, err := nc.ns.Get(ctx, key)
	if err != nil || !found || !live {
		return value, found, err
	}
	nc.mu.Lock()
	if nc.gen == gen && nc.live {
		if len(nc.items) >= nc.max {
			for k := range nc.items { // drop an arbitrary entry: a simple bound
				delete(nc.items, k)
				break
			}
		}
		nc.items[key] = nearItem{value: value, version: version}
	}
	nc.mu.Unlock()
	return value, true, nil
}

// Len is the number of keys held locally.
func (nc *NearCache) Len() int {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	nc.expireStale()
	return len(nc.items)
}

// Close stops watching (it has nothing to send, so it takes no context).
func (nc *NearCache) Close() {
	nc.ns.client.forget(nc)
	nc.stop()
}

func (nc *NearCache) stop() {
	nc.cancel()
	<-nc.done
}
