//! The connection table of one server process: bounds the connections open at once and, when
//! a new one arrives at the bound, closes the one that has been idle the longest to make room.
//!
//! Contract:
//! - [`Conns::admit`] (the acceptor, or whoever received a handed-over socket) returns a
//!   [`Ticket`] for the new connection, or `None` when it must be refused (the server
//!   answers 503 without waiting and closes it): at
//!   [`Conns::max`] open connections it first evicts the longest-idle one, and it refuses only
//!   when none is idle (every connection is inside a request) or too many evictions are still
//!   finishing. So a flood of idle clients costs at most `max` coroutines, and a new client is
//!   never locked out by clients that send nothing.
//! - The owner of a ticket calls [`Ticket::idle`] before it waits for a next request and
//!   [`Ticket::busy`] when bytes of one arrive; either returns `false` once the connection was
//!   evicted, and the owner must then close it without answering (HTTP lets a server close an
//!   idle keep-alive connection at any time). Dropping the ticket frees the slot.
//! - Eviction shuts the victim's socket down (both directions); the victim's blocked read
//!   returns and its coroutine ends and closes the socket. The evictor never closes the fd,
//!   and the owner drops its ticket (which waits out an eviction in progress) before it
//!   closes the fd, so a shutdown can never reach a closed and reused fd number.
//!
//! Cost: one atomic compare-and-swap and one clock read per request on the owner's side; the
//! scans (for a free slot, for the longest idle) happen once per connection.
//!
//! # Slot states
//! `FREE` (no connection) → `BUSY` (admitted; inside a request) ⇄ `IDLE + ms` (waiting for a
//! request since `ms` after the table's epoch). An evictor moves `IDLE + ms` → `CLOSING` (one
//! winner), shuts the socket down, then stores `EVICTED`. The owner's transitions are CASes
//! from the state it last set, so a concurrent eviction makes them fail; its release waits out
//! `CLOSING` (a few microseconds: one shutdown call) and then stores `FREE`.
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

const FREE: u64 = 0;
const BUSY: u64 = 1;
const CLOSING: u64 = 2;
const EVICTED: u64 = 3;
const IDLE: u64 = 16;

/// Connections that may still be finishing after their eviction, beyond [`Conns::max`].
const EVICTING_SLACK: usize = 64;

struct Slot {
    state: AtomicU64,
    fd: AtomicI32,
}

/// The table; see the module doc.
pub struct Conns {
    slots: Box<[Slot]>,
    open: AtomicUsize,
    max: usize,
    hint: AtomicUsize,
    epoch: Instant,
}

impl Conns {
    /// A table for at most `max` connections (at least 1).
    pub fn new(max: usize) -> Conns {
        let max = max.max(1);
        Conns {
            slots: (0..max + EVICTING_SLACK)
                .map(|_| Slot {
                    state: AtomicU64::new(FREE),
                    fd: AtomicI32::new(-1),
                })
                .collect(),
            open: AtomicUsize::new(0),
            max,
            hint: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    /// The bound on open connections.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now (including evicted ones still finishing).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn now_state(&self) -> u64 {
        IDLE + self.epoch.elapsed().as_millis() as u64
    }

    /// Admits the connection on `fd`; see the module doc. `None`: refuse it at once.
    pub fn admit(&self, fd: RawFd) -> Option<Ticket<'_>> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if open >= self.max && (open >= self.max + EVICTING_SLACK || !self.evict_longest_idle()) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        // `open` counts us, and at most max + EVICTING_SLACK are counted: a free slot exists
        // (or is about to: a finished connection frees its slot before its count).
        let n = self.slots.len();
        loop {
            let start = self.hint.fetch_add(1, Ordering::Relaxed);
            for k in 0..n {
                let i = (start + k) % n;
                let slot = &self.slots[i];
                if slot.state.load(Ordering::Relaxed) == FREE
                    && slot
                        .state
                        .compare_exchange(FREE, BUSY, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    // Relaxed is enough: only an evictor reads `fd`, after it won the CAS from
                    // an IDLE state that the owner stored (Release) after this store.
                    slot.fd.store(fd, Ordering::Relaxed);
                    return Some(Ticket {
                        conns: self,
                        index: i,
                        state: BUSY,
                    });
                }
            }
            std::thread::yield_now();
        }
    }

    /// Closes the connection idle the longest; false when none is idle.
    fn evict_longest_idle(&self) -> bool {
        loop {
            let victim = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let st = s.state.load(Ordering::Acquire);
                    (st >= IDLE).then_some((st, i))
                })
                .min();
            let Some((st, i)) = victim else {
                return false;
            };
            let slot = &self.slots[i];
            // Acquire: pairs with the owner's Release store of the IDLE state, so `fd` is the
            // owner's. While the slot is CLOSING its owner cannot free it and close the fd.
            if slot
                .state
                .compare_exchange(st, CLOSING, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue; // it became busy (or another evictor took it): look again
            }
            let fd = slot.fd.load(Ordering::Relaxed);
            let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
            slot.state.store(EVICTED, Ordering::Release);
            return true;
        }
    }
}

/// A connection's place in the table; see the module doc.
pub struct Ticket<'a> {
    conns: &'a Conns,
    index: usize,
    /// The state this owner last stored.
    state: u64,
}

impl Ticket<'_> {
    fn set(&mut self, to: u64) -> bool {
        let ok = self.conns.slots[self.index]
            .state
            .compare_exchange(self.state, to, Ordering::Release, Ordering::Relaxed)
            .is_ok();
        if ok {
            self.state = to;
        }
        ok
    }

    /// The connection waits for its next request. False: it was evicted, close it.
    pub fn idle(&mut self) -> bool {
        let now = self.conns.now_state();
        self.set(now)
    }

    /// Bytes of a request arrived. False: it was evicted, close it without answering.
    pub fn busy(&mut self) -> bool {
        self.state == BUSY || self.set(BUSY)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let slot = &self.conns.slots[self.index];
        loop {
            let st = slot.state.load(Ordering::Acquire);
            if st == CLOSING {
                // An evictor is inside one shutdown call; yield if it was preempted there.
                std::thread::yield_now();
                continue;
            }
            if slot
                .state
                .compare_exchange(st, FREE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
        }
        self.conns.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        (c, s)
    }

    #[test]
    fn at_the_bound_the_longest_idle_is_evicted_and_a_busy_one_never() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let conns = Conns::new(2);
        let (mut c1, s1) = pair(&l);
        let (_c2, s2) = pair(&l);
        let mut t1 = conns.admit(s1.as_raw_fd()).expect("first");
        let mut t2 = conns.admit(s2.as_raw_fd()).expect("second");
        assert!(t1.idle());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(t2.idle());
        assert!(t2.busy(), "t2 is busy again: only t1 may be evicted");
        let (_c3, s3) = pair(&l);
        let t3 = conns
            .admit(s3.as_raw_fd())
            .expect("third evicts the idle one");
        // t1's socket was shut down: its client reads end-of-stream; t1 learns it.
        let mut b = [0u8; 1];
        assert_eq!(c1.read(&mut b).expect("read"), 0);
        assert!(!t1.busy());
        drop(t1);
        assert_eq!(conns.open(), 2);
        // Now both are busy: a fourth is refused.
        let (_c4, s4) = pair(&l);
        assert!(conns.admit(s4.as_raw_fd()).is_none());
        assert_eq!(conns.open(), 2);
        drop((t2, t3));
        assert_eq!(conns.open(), 0);
    }

    /// Eight threads admit, idle, wake and drop connections on a table of 16 while evictions
    /// happen all the time: no slot is lost or double-booked (the count returns to zero and
    /// every slot is free), an evicted connection's socket is shut down (its client reads the
    /// end), and a ticket never comes back to life after its eviction.
    #[test]
    fn concurrent_admissions_and_evictions_keep_the_table_consistent() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let conns = std::sync::Arc::new(Conns::new(16));
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let conns = std::sync::Arc::clone(&conns);
                std::thread::spawn(move || {
                    // A listener each: accept must return the peer of this thread's connect.
                    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
                    // Each thread keeps up to 4 connections open (32 > 16: evictions happen).
                    let mut window = std::collections::VecDeque::new();
                    let (mut evicted, mut refused) = (0, 0);
                    for i in 0..300usize {
                        let (c, s) = pair(&l);
                        match conns.admit(s.as_raw_fd()) {
                            Some(mut ticket) => {
                                // Two in three wait for a request (evictable); one stays busy.
                                if (i + t) % 3 != 0 {
                                    let _ = ticket.idle();
                                }
                                window.push_back((c, s, ticket));
                            }
                            None => refused += 1,
                        }
                        if window.len() > 4 {
                            let (mut c, s, mut ticket) = window.pop_front().expect("window");
                            if !ticket.busy() {
                                evicted += 1;
                                let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                                let mut b = [0u8; 1];
                                assert_eq!(c.read(&mut b).expect("evicted: read"), 0);
                                assert!(!ticket.idle(), "an evicted ticket stays evicted");
                            }
                            drop(ticket);
                            drop(s);
                        }
                    }
                    for (_, s, ticket) in window.drain(..) {
                        drop(ticket);
                        drop(s);
                    }
                    (evicted, refused)
                })
            })
            .collect();
        let (mut evicted, mut refused) = (0, 0);
        for h in handles {
            let (e, r) = h.join().expect("thread");
            evicted += e;
            refused += r;
        }
        assert!(evicted > 0, "the test must exercise evictions");
        assert_eq!(conns.open(), 0, "every ticket dropped: nothing open");
        assert!(
            conns
                .slots
                .iter()
                .all(|s| s.state.load(Ordering::Relaxed) == FREE),
            "every slot free"
        );
        println!("{evicted} evictions seen by their owners, {refused} admissions refused");
    }
}
