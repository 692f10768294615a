package engine

import "strings"

// Resources form a trie of subtree keys (issue 14, DESIGN.md "Subtrees"):
// a key's parent is the nearest subtree key strictly above it, its path
// up to and including the '/' before its last element ("FILE:/src/a.ts"
// and "FILE:/src/x/" have the parent "FILE:/src/", whose parent is
// "FILE:/", a root). Every resource in Engine.resources has its parent
// there too, so the subtree keys covering a key are its parent chain, and
// a subtree key's summary (resource.below) says what is held and queued
// under it without visiting what is there.

// parentKey returns the key of the subtree key that is key's parent, and
// false for a root (a path without a '/' before its last element).
func parentKey(key string) (string, bool) {
	colon := strings.IndexByte(key, ':')
	if colon < 0 {
		return "", false
	}
	end := len(key)
	if end > colon+1 && key[end-1] == '/' {
		end--
	}
	i := strings.LastIndexByte(key[colon+1:end], '/')
	if i < 0 {
		return "", false
	}
	return key[:colon+1+i+1], true
}

// isBelow reports whether key lies strictly below the subtree key sub.
func isBelow(key, sub string) bool {
	return len(key) > len(sub) && strings.HasPrefix(key, sub)
}

// resourceFor returns the resource for key, creating it and the subtree
// keys above it that are missing.
func (e *Engine) resourceFor(key string) *resource {
	r := e.resources.get(key)
	if r == nil {
		r = &resource{key: key}
		if pk, ok := parentKey(key); ok {
			// The parent's key shares the child's bytes.
			r.parent = e.resourceFor(pk)
			r.parent.kids++
		}
		e.resources.put(r)
		e.byKey.ReplaceOrInsert(r)
	}
	return r
}

// nodeAbove returns the deepest resource strictly above key (one of the
// subtree keys covering it), or nil. It is for keys that have no resource
// of their own; since a resource's parents always exist, which of the
// prefixes exist is monotone in their depth, and a binary search over them
// costs O(log depth) map lookups.
func (e *Engine) nodeAbove(key string) *resource {
	colon := strings.IndexByte(key, ':')
	end := len(key)
	if end > colon+1 && key[end-1] == '/' {
		end--
	}
	var buf [32]int
	slashes := buf[:0]
	for i := colon + 1; i < end; i++ {
		if key[i] == '/' {
			slashes = append(slashes, i)
		}
	}
	var found *resource
	for lo, hi := 0, len(slashes); lo < hi; {
		mid := int(uint(lo+hi) >> 1)
		if r := e.resources.get(key[:slashes[mid]+1]); r != nil {
			found, lo = r, mid+1
		} else {
			hi = mid
		}
	}
	return found
}

// maxIdleResources bounds how many resources with nothing on them are kept
// (for reuse: a hot key then costs no allocation and no map insert).
const maxIdleResources = 4096

// idle reports whether nothing is on the resource or under it.
func (r *resource) idle() bool {
	return len(r.holders()) == 0 && len(r.queue()) == 0 && !r.frozen && !r.isDirty && r.kids == 0
}

// dropIfIdle parks an idle resource in the idle list; beyond
// maxIdleResources the oldest parked ones are forgotten, and so are the
// subtree keys above them that are left with nothing.
func (e *Engine) dropIfIdle(r *resource) {
	if r.parked || !r.idle() || e.resources.get(r.key) != r {
		return
	}
	r.parked = true
	e.idle = append(e.idle, r)
	if len(e.idle) <= maxIdleResources {
		return
	}
	n := len(e.idle) / 2
	var orphans []*resource
	for i, old := range e.idle[:n] {
		old.parked = false
		if old.idle() && e.resources.get(old.key) == old {
			e.dropSoft(old)
			e.resources.del(old)
			e.byKey.Delete(old)
			if p := old.parent; p != nil {
				p.kids--
				if p.idle() {
					orphans = append(orphans, p)
				}
			}
		}
		e.idle[i] = nil
	}
	e.idle = append(e.idle[:0], e.idle[n:]...)
	for _, p := range orphans {
		e.dropIfIdle(p)
	}
}

// eachQueuedBelow calls fn for every resource strictly below the subtree
// key r that has requests queued on it (some more than once). It visits
// the queued requests of the agents that r's summary lists, not the keys
// below r.
func (e *Engine) eachQueuedBelow(r *resource, fn func(*resource)) {
	s := r.below()
	if s == nil {
		return
	}
	for c := range s.queued {
		for _, qb := range s.queued[c] {
			for _, w := range qb.agent.waiters {
				for _, o := range w.res {
					if isBelow(o.key, r.key) {
						fn(o)
					}
				}
			}
		}
	}
}

// markOverlapping marks for deciding again the queues that a change on r
// may decide (a lease on r ended, or one was granted there): r's own, those
// of the subtree keys above r, and when r is a subtree key, those of the
// keys below it. Queues holding only self are left alone.
func (e *Engine) markOverlapping(r *resource, self *waiter) {
	if len(e.waiters) == 0 {
		return // nothing is queued anywhere
	}
	for n := r; n != nil; n = n.parent {
		if othersQueued(n, self) {
			e.markDirty(n)
		}
	}
	e.eachQueuedBelow(r, func(o *resource) {
		if othersQueued(o, self) {
			e.markDirty(o)
		}
	})
}
