//! When the open loop sends: a fixed schedule of intended send times, independent of answers.
//!
//! `--rate R` over C connections is one global schedule, request g at `start + g / R`; connection
//! c sends the requests g ≡ c (mod C). The total is then exactly R per second whatever C is, and
//! no connection's schedule drifts (each time is computed from g, never by adding intervals).
//!
//! Latency is measured from the intended time (wrk2's correction of coordinated omission: a
//! request the generator could not send on time, because the server held every session or
//! connection busy, still counts the time it waited). A request may leave up to
//! [`EARLY_SEND_NS`] before its time, because tokio's timer fires on millisecond ticks; such a
//! request is measured from when it was actually sent, so sending early never flatters the
//! result.

/// How early a request may be sent: one tick of tokio's timer wheel.
pub const EARLY_SEND_NS: u64 = 1_000_000;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// One connection's share of the global schedule.
#[derive(Clone, Debug)]
pub struct Pacer {
    start_ns: u64,
    rate: u64,
    connections: u64,
    connection: u64,
    /// This connection's next request, counted within its share (0, 1, 2, …).
    next: u64,
}

impl Pacer {
    /// `rate` requests per second in total from `start_ns`, for connection `connection` of
    /// `connections`. `rate` and `connections` are at least 1.
    pub fn new(start_ns: u64, rate: u64, connections: u64, connection: u64) -> Self {
        debug_assert!(rate > 0 && connections > 0 && connection < connections);
        Self { start_ns, rate, connections, connection, next: 0 }
    }

    /// The intended send time of this connection's i-th request.
    pub fn intended(&self, i: u64) -> u64 {
        let g = u128::from(i) * u128::from(self.connections) + u128::from(self.connection);
        let offset = g * NANOS_PER_SEC / u128::from(self.rate);
        self.start_ns.saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
    }

    /// When the next request is due.
    pub fn next_at(&self) -> u64 {
        self.intended(self.next)
    }

    /// How many requests are due at `now_ns` (intended at or before it) and not yet taken.
    pub fn due(&self, now_ns: u64) -> u64 {
        self.count_before(now_ns.saturating_add(1)).saturating_sub(self.next)
    }

    /// Requests taken so far.
    pub fn taken(&self) -> u64 {
        self.next
    }

    /// Takes the next request: returns its intended time.
    pub fn take(&mut self) -> u64 {
        let at = self.next_at();
        self.next += 1;
        at
    }

    /// How many of this connection's requests are intended before `t_ns`.
    pub fn count_before(&self, t_ns: u64) -> u64 {
        if t_ns <= self.start_ns {
            return 0;
        }
        // g < (t − start) · rate / 1e9, rounded up: the globals due strictly before t.
        let span = u128::from(t_ns - self.start_ns) * u128::from(self.rate);
        let globals = span.div_ceil(NANOS_PER_SEC);
        let c = u128::from(self.connection);
        let mine = if globals > c { (globals - c).div_ceil(u128::from(self.connections)) } else { 0 };
        u64::try_from(mine).unwrap_or(u64::MAX)
    }

    /// Requests intended in `[from_ns, until_ns)` that were never taken.
    pub fn not_taken_between(&self, from_ns: u64, until_ns: u64) -> u64 {
        let due = self.count_before(until_ns);
        let first = self.count_before(from_ns).max(self.next);
        due.saturating_sub(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_share_one_schedule_exactly() {
        // 1000/s over 3 connections: globals every 1 ms, connection 1 sends 1, 4, 7, … ms.
        let p = Pacer::new(5_000, 1000, 3, 1);
        assert_eq!(p.intended(0), 5_000 + 1_000_000);
        assert_eq!(p.intended(1), 5_000 + 4_000_000);
        let all: u64 = (0..3).map(|c| Pacer::new(0, 1000, 3, c).count_before(1_000_000_000)).sum();
        assert_eq!(all, 1000);
        // A rate that does not divide a second: 7/s over 2 connections, 70 in 10 s.
        let all: u64 = (0..2).map(|c| Pacer::new(0, 7, 2, c).count_before(10_000_000_000)).sum();
        assert_eq!(all, 70);
    }

    #[test]
    fn due_and_take_walk_the_schedule() {
        let mut p = Pacer::new(0, 1000, 1, 0);
        assert_eq!(p.due(0), 1); // request 0 is due at the start
        assert_eq!(p.due(2_500_000), 3); // 0, 1 and 2 ms
        assert_eq!(p.take(), 0);
        assert_eq!(p.take(), 1_000_000);
        assert_eq!(p.due(2_500_000), 1);
        assert_eq!(p.next_at(), 2_000_000);
        // From the 2nd to the 5th ms, 0..=1 were taken, 2, 3 and 4 were not.
        assert_eq!(p.not_taken_between(1_000_000, 5_000_000), 3);
        assert_eq!(p.not_taken_between(0, 1_000_000), 0);
    }
}
