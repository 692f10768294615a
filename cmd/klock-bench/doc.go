// Command klock-bench measures klock side by side with the locks users would
// otherwise pick, in one run and through one workload code path.
//
// Each back end — klockd through clientlib, a real redis-server (SET NX PX
// plus the compare-and-delete Lua release), flock(2) on files, and a bare
// msgpack echo over a Unix socket (the round-trip floor of any daemon) — is
// driven by W concurrent workers for a fixed time per cell. A cell is one
// back end, one workload and one W; for each the tool reports acquire+release
// pairs per second, the latency of one pair (p50, p99, p999), denials in the
// contended workload, and the daemon's resident memory.
//
// Workloads:
//
//	uncontended  each worker acquires and releases its own resource
//	contended    all workers on 4 resources; denials counted by reason
//	many-leases  100,000 leases held (acquired once, before the cells), then
//	             the uncontended loop
//	handoff      klock only: a holder releases a lease a senior waiter is
//	             parked on; the cell's latency is from the release sent to
//	             the waiter's grant arriving, shown next to the release's
//	             own round trip
//	stall        klock only, once per repetition, on the instance holding
//	             the many-leases leases: one client pages through every
//	             lease (list_leases, 1,000 a page) while another ends a
//	             session of -session leases, each with a parked senior
//	             waiter; the cell's latencies are a third client's stats
//	             calls meanwhile (issue 18: the longest <= 50 ms). With
//	             -stall-by exit the session's leases are bound to a child
//	             process ("klock-bench bound-holder"), which is killed
//	             instead: klockd ends them as their process ended
//
// After the cells, the memory report (-release-wait, 20 s by default; 0
// skips it): for each back end holding the many-leases leases, its RSS per
// lease held, then everything released at once (klock: end_session;
// redis: FLUSHALL) and RSS sampled each second for -release-wait.
//
// Output is an aligned table on stdout with the ratios klock/redis and
// klock/echo per cell, the targets evaluated as medians of ratios over
// the repetitions of the run, and optionally JSON (-json) and a plot of
// throughput and p99 by W (-plot, .png or .svg).
//
// Usage:
//
//	go run ./cmd/klock-bench [-backends echo,flock,redis,klock] [-w 1,8,64]
//	    [-d 5s] [-reps 1] [-workloads uncontended,contended,many-leases]
//	    [-leases 100000] [-session 10000] [-stall-by end_session]
//	    [-release-wait 20s]
//	    [-json out.json] [-plot out.svg] [-short]
//
// The tool re-executes itself as the echo server ("klock-bench echo-server
// -socket PATH") so that the echo floor, like every daemon, runs in its own
// process, and as "flock-holder" processes that keep the many-leases flock
// locks (one process cannot open 100,000 files under the usual limit).
package main
