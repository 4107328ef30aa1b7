//! One connection of the load generator: a writer task, a reader task, and the state they share.
//!
//! The writer picks sessions that are ready for their next request (their previous answer has
//! arrived: a client never has two requests of one session outstanding, RFC 4006 §5.1 numbers
//! them in sequence), gives each request the next Hop-by-Hop and End-to-End ids, records it in
//! the outstanding ring, and writes the whole batch with one `write_all`. The reader frames
//! answers with `diameter::frame`, matches each to its request by Hop-by-Hop id, checks that
//! End-to-End id, Session-Id and CC-Request-Number are the request's (RFC 6733 §6.2, §8.8; RFC
//! 4006 §8.2), records the latency and Result-Code, and hands the session back to the writer.
//!
//! Both tasks lock [`State`] once per batch (never across an `.await`), so the lock is taken a
//! few times per write or read, not per request. Requests in flight live in a ring indexed by
//! the low bits of their Hop-by-Hop id: ids only grow, so the oldest request is found in order
//! for timeouts, and a slot is free again once its request is answered or timed out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scenario::{Chooser, Fields, Kind, Rng, Step, Templates};
use super::schedule::{Pacer, EARLY_SEND_NS};
use super::stats::{ProtocolError, Stats};
use crate::diameter::{frame, AvpCode, CommandCode, LocalIdentity, MessageRef, ResultCode};
use crate::net::client::{answer_server_request, unix_now_secs, write_dpr};
use crate::tools::ccr::ntp_seconds;

/// Requests encoded into one write at most (≈ 140 KB of data CCRs): larger batches only delay
/// the first request of the batch.
pub const REQUESTS_PER_WRITE_MAX: usize = 256;

/// Slots of a connection's ring of outstanding requests at most (a power of two). A session has
/// at most one request outstanding, so a connection needs at most `--in-flight` (closed loop) or
/// its number of sessions (open loop) slots; an open loop that gets further ahead of the answers
/// than the ring allows waits, and the wait counts as latency.
pub const RING_SLOTS_MAX: usize = 65_536;

/// The ring holds this many times the requests that can be outstanding, so a request that
/// timed out keeps its slot for a while and its late answer is recognised as late.
const RING_SLACK_FACTOR: usize = 4;
const RING_SLOTS_MIN: usize = 1024;

const _: () = assert!(RING_SLOTS_MAX.is_power_of_two() && RING_SLOTS_MIN.is_power_of_two());
const _: () = assert!(RING_SLOTS_MIN <= RING_SLOTS_MAX);

/// How often an idle writer looks for timed-out requests and phase changes.
const TICK_NS: u64 = 10_000_000;

/// Bytes asked of the kernel per read (a few dozen answers).
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Initial write buffer: one full batch of data CCRs.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Where the run is; every connection follows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Phase {
    /// Connected; nothing is sent yet.
    Idle = 0,
    /// `--only-updates`: each session sends its CCR-I; nothing is counted.
    Opening = 1,
    /// Warm-up, then the measured window (which requests count is decided by their times).
    Running = 2,
    /// No new requests; outstanding ones are answered or time out.
    Stopping = 3,
    /// DPR sent; waiting for DPA.
    Disconnecting = 4,
}

/// What every connection of a run shares.
#[derive(Debug)]
pub struct Run {
    pub epoch: Instant,
    phase: AtomicU8,
    running_since_ns: AtomicU64,
    measure_from_ns: AtomicU64,
    measure_until_ns: AtomicU64,
    pub timeout_ns: u64,
    pub in_flight: usize,
    /// Open loop: requests per second in total.
    pub rate: Option<u64>,
    pub connections: usize,
    pub updates: u32,
    pub only_updates: bool,
    pub chooser: Chooser,
    /// Ends every reader that still waits (for DPA) when the run is over.
    pub hard_stop: CancellationToken,
}

impl Run {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        timeout: Duration,
        in_flight: usize,
        rate: Option<u64>,
        connections: usize,
        updates: u32,
        only_updates: bool,
        chooser: Chooser,
    ) -> Self {
        Self {
            epoch: Instant::now(),
            phase: AtomicU8::new(Phase::Idle as u8),
            running_since_ns: AtomicU64::new(0),
            measure_from_ns: AtomicU64::new(u64::MAX),
            measure_until_ns: AtomicU64::new(u64::MAX),
            timeout_ns: u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
            in_flight,
            rate,
            connections,
            updates,
            only_updates,
            chooser,
            hard_stop: CancellationToken::new(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Idle,
            1 => Phase::Opening,
            2 => Phase::Running,
            3 => Phase::Stopping,
            _ => Phase::Disconnecting,
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// Starts the running phase at `start_ns`: warm-up until `from_ns`, measured until `until_ns`.
    pub fn start_running(&self, start_ns: u64, from_ns: u64, until_ns: u64) {
        self.running_since_ns.store(start_ns, Ordering::Release);
        self.measure_from_ns.store(from_ns, Ordering::Release);
        self.measure_until_ns.store(until_ns, Ordering::Release);
        self.set_phase(Phase::Running);
    }

    fn window(&self) -> (u64, u64) {
        (self.measure_from_ns.load(Ordering::Acquire), self.measure_until_ns.load(Ordering::Acquire))
    }
}

/// How a connection stands.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Status {
    Open,
    /// Ended as planned: DPA received (or the wait for it ran out at the end of the run).
    Closed,
    /// Ended by a failure during the run; the text says which.
    Broken(String),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SlotState {
    Free,
    Outstanding,
    /// Timed out; kept until the slot is reused so a late answer is recognised.
    TimedOut,
}

/// One request in flight.
#[derive(Clone, Copy, Debug)]
struct Slot {
    hop_by_hop: u32,
    end_to_end: u32,
    session: u32,
    number: u32,
    step: Step,
    state: SlotState,
    /// Counted in the report (its start is inside the measured window).
    counted: bool,
    /// Latency starts here: the intended send time, or the actual one if that was earlier.
    start_ns: u64,
    /// The timeout runs from the actual send.
    sent_ns: u64,
}

const FREE_SLOT: Slot = Slot {
    hop_by_hop: 0,
    end_to_end: 0,
    session: 0,
    number: 0,
    step: Step::Initial,
    state: SlotState::Free,
    counted: false,
    start_ns: 0,
    sent_ns: 0,
};

/// A credit-control session this connection keeps.
#[derive(Clone, Copy, Debug)]
struct Session {
    /// The number at the end of its Session-Id.
    seq: u32,
    kind: Kind,
    next: Step,
    number: u32,
    updates_left: u32,
    subscriber: u64,
}

/// A request chosen under the lock, encoded after it.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing {
    kind: Kind,
    step: Step,
    fields: Fields,
}

/// What the writer does after a batch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Next {
    /// More can be sent right away.
    Now,
    /// Wait for the reader's wake-up or this time (ns since the epoch).
    At(u64),
    /// Write what is buffered, then end.
    Exit,
}

/// The state the writer and the reader share.
#[derive(Debug)]
pub struct State {
    ring: Vec<Slot>,
    mask: u32,
    next_hop_by_hop: u32,
    next_end_to_end: u32,
    /// The oldest Hop-by-Hop id that may still be outstanding.
    oldest: u32,
    outstanding: usize,
    sessions: Vec<Session>,
    ready: VecDeque<u32>,
    /// `--only-updates`: sessions opened, waiting for the running phase.
    parked: Vec<u32>,
    /// Sessions still open or being opened (`--only-updates` drops failed ones for good).
    live_sessions: usize,
    next_seq: u32,
    rng: Rng,
    pacer: Option<Pacer>,
    seen_phase: Phase,
    /// Answers we owe the server (DWA, DPA), written before the next batch.
    control: BytesMut,
    dpr_hop_by_hop: Option<u32>,
    pub status: Status,
    pub stats: Stats,
    /// Every valid answer, counted or not (the progress line's rate).
    pub answers_total: u64,
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    pub index: usize,
    run: Arc<Run>,
    templates: Templates,
    local: LocalIdentity,
    state: Mutex<State>,
    wake: Notify,
}

impl Conn {
    /// `sessions` sessions for this connection, `ids` the next (Hop-by-Hop, End-to-End) ids
    /// after the capabilities exchange.
    pub fn new(
        index: usize,
        run: Arc<Run>,
        templates: Templates,
        local: LocalIdentity,
        sessions: usize,
        ids: (u32, u32),
        seed: u64,
    ) -> Self {
        let outstanding_max = match run.rate {
            Some(_) => sessions,
            None => run.in_flight.min(sessions),
        };
        let ring_len = outstanding_max
            .saturating_mul(RING_SLACK_FACTOR)
            .clamp(RING_SLOTS_MIN, RING_SLOTS_MAX)
            .next_power_of_two();
        let mut rng = Rng::new(seed);
        let mut seqs = 1..;
        let all: Vec<Session> =
            (0..sessions).map(|_| new_session(&run, &mut rng, seqs.next().unwrap_or(0))).collect();
        let next_seq = seqs.next().unwrap_or(0);
        let state = State {
            ring: vec![FREE_SLOT; ring_len],
            mask: u32::try_from(ring_len - 1).unwrap_or(u32::MAX),
            next_hop_by_hop: ids.0,
            next_end_to_end: ids.1,
            oldest: ids.0,
            outstanding: 0,
            sessions: all,
            ready: (0..u32::try_from(sessions).unwrap_or(u32::MAX)).collect(),
            parked: Vec::with_capacity(if run.only_updates { sessions } else { 0 }),
            live_sessions: sessions,
            next_seq,
            rng,
            pacer: None,
            seen_phase: Phase::Idle,
            control: BytesMut::new(),
            dpr_hop_by_hop: None,
            status: Status::Open,
            stats: Stats::new(),
            answers_total: 0,
        };
        Self { index, run, templates, local, state: Mutex::new(state), wake: Notify::new() }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in one of this connection's tasks poisons only what it was doing; the counts
        // are still the best there are.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// `--only-updates`: every session has had its CCR-I answered (or given up).
    pub fn opening_done(&self) -> bool {
        let st = self.lock();
        st.status != Status::Open || (st.ready.is_empty() && st.outstanding == 0)
    }

    /// Sessions opened so far (`--only-updates`), and sessions still live.
    pub fn opened(&self) -> (usize, usize) {
        let st = self.lock();
        (st.parked.len(), st.live_sessions)
    }

    /// Nothing outstanding any more (or the connection is gone).
    pub fn drained(&self) -> bool {
        let st = self.lock();
        st.status != Status::Open || st.outstanding == 0
    }

    /// The writer task: runs until the connection is closed or broken.
    pub async fn write_loop(self: Arc<Self>, mut wr: OwnedWriteHalf) {
        let mut wbuf = BytesMut::with_capacity(WRITE_BUFFER_BYTES);
        let mut batch: Vec<Outgoing> = Vec::with_capacity(REQUESTS_PER_WRITE_MAX);
        loop {
            let now = self.run.now_ns();
            let next = self.lock().plan(&self, now, &mut batch, &mut wbuf);
            if !batch.is_empty() {
                // Event-Timestamp (RFC 6733 §8.21) to the second, read once per batch.
                let ntp_secs = ntp_seconds(unix_now_secs());
                for o in batch.drain(..) {
                    let fields = Fields { ntp_secs, ..o.fields };
                    self.templates.write(&mut wbuf, o.kind, o.step, &fields);
                }
            }
            if !wbuf.is_empty() {
                // A server that stops reading blocks the write; the run's hard stop ends it.
                let written = tokio::select! {
                    w = wr.write_all(&wbuf) => w,
                    () = self.run.hard_stop.cancelled() => break,
                };
                if let Err(e) = written {
                    self.lock().broken(format!("write failed: {e}"));
                    break;
                }
                wbuf.clear();
            }
            match next {
                Next::Now => {}
                Next::Exit => break,
                Next::At(t) => {
                    let at = self.run.epoch + Duration::from_nanos(t);
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        }
        let _ = wr.shutdown().await;
    }

    /// The reader task: runs until DPA, the server closes or fails, or the run's hard stop.
    pub async fn read_loop(self: Arc<Self>, mut rd: OwnedReadHalf, mut rbuf: BytesMut) {
        loop {
            let now = self.run.now_ns();
            let (done, changed) = self.lock().take_messages(&self, &mut rbuf, now);
            if changed {
                self.wake();
            }
            if done {
                break;
            }
            rbuf.reserve(READ_CHUNK_BYTES);
            let read = tokio::select! {
                r = rd.read_buf(&mut rbuf) => r,
                () = self.run.hard_stop.cancelled() => {
                    self.lock().close();
                    break;
                }
            };
            match read {
                Ok(0) => {
                    self.lock().peer_closed();
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    self.lock().broken(format!("read failed: {e}"));
                    break;
                }
            }
        }
        self.wake();
    }
}

fn new_session(run: &Run, rng: &mut Rng, seq: u32) -> Session {
    let kind = run.chooser.kind(rng);
    Session {
        seq,
        kind,
        next: kind.first_step(),
        number: 0,
        updates_left: run.updates,
        subscriber: run.chooser.subscriber(rng),
    }
}

impl State {
    /// Chooses what to send now (under the lock); the writer encodes it after.
    fn plan(&mut self, conn: &Conn, now: u64, batch: &mut Vec<Outgoing>, wbuf: &mut BytesMut) -> Next {
        let run = &*conn.run;
        if !self.control.is_empty() {
            wbuf.extend_from_slice(&self.control);
            self.control.clear();
        }
        if self.status != Status::Open {
            return Next::Exit;
        }
        self.expire(run, now);
        let phase = run.phase();
        if phase != self.seen_phase {
            self.enter(conn, phase);
        }
        let budget = match phase {
            Phase::Idle | Phase::Stopping => return Next::At(now + TICK_NS),
            Phase::Disconnecting => {
                if self.dpr_hop_by_hop.is_none() {
                    let (h, e) = self.take_ids();
                    write_dpr(wbuf, &conn.local, h, e);
                    self.dpr_hop_by_hop = Some(h);
                }
                return Next::At(now + TICK_NS);
            }
            Phase::Running => self.budget(run, now),
            // Sessions open as fast as the closed loop allows, whatever the run's mode.
            Phase::Opening => run.in_flight.saturating_sub(self.outstanding),
        };
        let (from, until) = run.window();
        let mut sent = 0;
        while sent < budget.min(REQUESTS_PER_WRITE_MAX) {
            let slot_index = (self.next_hop_by_hop & self.mask) as usize;
            if self.ring[slot_index].state == SlotState::Outstanding {
                break; // the ring is full: wait for answers
            }
            let Some(session_index) = self.ready.pop_front() else { break };
            let intended = match (&mut self.pacer, phase) {
                (Some(p), Phase::Running) => p.take(),
                _ => now,
            };
            let start_ns = intended.min(now);
            let s = self.sessions[session_index as usize];
            let (hop_by_hop, end_to_end) = self.take_ids();
            // The schedule decides what is in the window (the closed loop's schedule is now).
            let counted = phase == Phase::Running && (from..until).contains(&intended);
            self.ring[slot_index] = Slot {
                hop_by_hop,
                end_to_end,
                session: session_index,
                number: s.number,
                step: s.next,
                state: SlotState::Outstanding,
                counted,
                start_ns,
                sent_ns: now,
            };
            self.outstanding += 1;
            if counted {
                self.stats.requests += 1;
                self.stats.request_bytes += conn.templates.get(s.kind, s.next).len() as u64;
            }
            let fields = Fields {
                hop_by_hop,
                end_to_end,
                session: s.seq,
                number: s.number,
                subscriber: s.subscriber,
                ntp_secs: 0,
            };
            batch.push(Outgoing { kind: s.kind, step: s.next, fields });
            sent += 1;
        }
        if sent == REQUESTS_PER_WRITE_MAX && budget > sent {
            return Next::Now;
        }
        match (&self.pacer, phase) {
            // Next request of the schedule, unless one is due already and waits for a session
            // or a ring slot (then the reader's wake-up comes first).
            (Some(p), Phase::Running) if p.next_at() > now + EARLY_SEND_NS => {
                Next::At((p.next_at() - EARLY_SEND_NS).min(now + TICK_NS))
            }
            _ => Next::At(now + TICK_NS),
        }
    }

    /// How many requests the running phase may send now.
    fn budget(&self, run: &Run, now: u64) -> usize {
        let (_, until) = run.window();
        match &self.pacer {
            Some(p) => {
                // Due now (or within the timer's tick), and intended before the window ends.
                let due = p.due(now + EARLY_SEND_NS);
                let before_end = p.count_before(until).saturating_sub(p.taken());
                usize::try_from(due.min(before_end)).unwrap_or(usize::MAX)
            }
            None if now >= until => 0,
            None => run.in_flight.saturating_sub(self.outstanding),
        }
    }

    fn take_ids(&mut self) -> (u32, u32) {
        let ids = (self.next_hop_by_hop, self.next_end_to_end);
        self.next_hop_by_hop = self.next_hop_by_hop.wrapping_add(1);
        self.next_end_to_end = self.next_end_to_end.wrapping_add(1);
        ids
    }

    /// A phase change seen for the first time.
    fn enter(&mut self, conn: &Conn, phase: Phase) {
        let run = &*conn.run;
        if phase == Phase::Running {
            for i in self.parked.drain(..) {
                self.ready.push_back(i);
            }
            if let Some(rate) = run.rate {
                let since = run.running_since_ns.load(Ordering::Acquire);
                self.pacer = Some(Pacer::new(since, rate, run.connections as u64, conn.index as u64));
            }
        }
        if self.seen_phase == Phase::Running {
            if let Some(p) = &self.pacer {
                let (from, until) = run.window();
                self.stats.unsent += p.not_taken_between(from, until);
            }
        }
        self.seen_phase = phase;
    }

    /// Times out requests older than the timeout, oldest first.
    fn expire(&mut self, run: &Run, now: u64) {
        while self.oldest != self.next_hop_by_hop {
            let i = (self.oldest & self.mask) as usize;
            let slot = self.ring[i];
            if slot.hop_by_hop == self.oldest && slot.state == SlotState::Outstanding {
                if now.saturating_sub(slot.sent_ns) < run.timeout_ns {
                    break;
                }
                self.ring[i].state = SlotState::TimedOut;
                self.outstanding -= 1;
                if slot.counted {
                    self.stats.timeouts += 1;
                }
                // Its state on the server is unknown: give the session up.
                self.session_failed(run, slot.session);
            }
            self.oldest = self.oldest.wrapping_add(1);
        }
    }

    /// Frames and handles every whole message in `rbuf`. Returns (the reader is done, something
    /// changed that the writer should see).
    fn take_messages(&mut self, conn: &Conn, rbuf: &mut BytesMut, now: u64) -> (bool, bool) {
        let mut pos = 0;
        let mut changed = false;
        let result = loop {
            match frame(&rbuf[pos..]) {
                Ok(None) => break None,
                Ok(Some(len)) => {
                    changed |= self.on_message(conn, &rbuf[pos..pos + len], now);
                    pos += len;
                    if self.status != Status::Open {
                        break None;
                    }
                }
                Err(e) => break Some(e),
            }
        };
        rbuf.advance(pos);
        if let Some(e) = result {
            self.stats.protocol_error(ProtocolError::Malformed);
            self.broken(format!("corrupt stream from the server: {e}"));
            return (true, true);
        }
        (self.status != Status::Open, changed)
    }

    /// One framed message from the server. Returns whether the writer should look again.
    fn on_message(&mut self, conn: &Conn, raw: &[u8], now: u64) -> bool {
        let Some(msg) = MessageRef::parse(raw) else {
            self.stats.protocol_error(ProtocolError::Malformed);
            return false;
        };
        let h = msg.header;
        if h.flags.is_request() {
            answer_server_request(&mut self.control, &conn.local, &msg);
            if h.command == CommandCode::DISCONNECT_PEER {
                // RFC 6733 §5.4: the server is going away; DPA goes out, then we stop. Its DPR
                // crossing ours at the end of the run is a clean end, not a failure.
                if self.dpr_hop_by_hop.is_some() {
                    self.close();
                } else {
                    self.broken("the server disconnected with DPR".into());
                }
            }
            return true;
        }
        if Some(h.hop_by_hop) == self.dpr_hop_by_hop {
            self.close();
            return true;
        }
        let i = (h.hop_by_hop & self.mask) as usize;
        let slot = self.ring[i];
        if slot.hop_by_hop != h.hop_by_hop || slot.state == SlotState::Free {
            self.stats.protocol_error(ProtocolError::UnknownHopByHop);
            return false;
        }
        if slot.state == SlotState::TimedOut {
            self.ring[i].state = SlotState::Free;
            if slot.counted {
                self.stats.late_answers += 1;
            }
            return false;
        }
        // From here on a bad answer leaves its request outstanding: the right answer may still
        // come, and if it does not, the request times out.
        if h.end_to_end != slot.end_to_end {
            self.stats.protocol_error(ProtocolError::WrongEndToEnd);
            return false;
        }
        let seq = self.sessions[slot.session as usize].seq;
        let answer = match check_answer(conn, &msg, seq, slot.number) {
            Ok(result) => result,
            Err(e) => {
                self.stats.protocol_error(e);
                return false;
            }
        };
        self.ring[i].state = SlotState::Free;
        self.outstanding -= 1;
        self.answers_total += 1;
        if slot.counted {
            self.stats.answer(answer, now.saturating_sub(slot.start_ns) / 1_000);
        }
        if ResultCode(answer).is_success() {
            self.advance(&conn.run, slot.session, slot.step);
        } else {
            self.session_failed(&conn.run, slot.session);
        }
        true
    }

    /// The session's request succeeded: it moves on, or ends and makes room for a new one.
    fn advance(&mut self, run: &Run, index: u32, step: Step) {
        let s = &mut self.sessions[index as usize];
        match step {
            Step::Initial => {
                s.number = 1;
                s.next = if run.only_updates || s.updates_left > 0 { Step::Update } else { Step::Terminate };
            }
            Step::Update => {
                s.number = s.number.wrapping_add(1);
                if !run.only_updates {
                    s.updates_left = s.updates_left.saturating_sub(1);
                    if s.updates_left == 0 {
                        s.next = Step::Terminate;
                    }
                }
            }
            Step::Terminate | Step::Event => {
                self.renew(run, index);
                return;
            }
        }
        if self.seen_phase == Phase::Opening && run.phase() == Phase::Opening {
            self.parked.push(index);
        } else {
            self.ready.push_back(index);
        }
    }

    /// The session's request failed or timed out: it is not continued (RFC 4006 leaves a failed
    /// session's state to the server). In `--only-updates` it is gone for the run; otherwise a
    /// new session takes its place.
    fn session_failed(&mut self, run: &Run, index: u32) {
        self.stats.sessions_dropped += 1;
        if run.only_updates {
            self.live_sessions = self.live_sessions.saturating_sub(1);
        } else {
            self.renew(run, index);
        }
    }

    /// A new session (new Session-Id, kind and subscriber) in slot `index`, ready to start.
    fn renew(&mut self, run: &Run, index: u32) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.sessions[index as usize] = new_session(run, &mut self.rng, seq);
        self.ready.push_back(index);
    }

    /// The connection failed: every outstanding request is lost.
    fn broken(&mut self, why: String) {
        if self.status == Status::Open {
            self.lose_outstanding();
            self.status = Status::Broken(why);
        }
    }

    /// The server closed the connection: expected after our DPR, a failure before it.
    fn peer_closed(&mut self) {
        if self.dpr_hop_by_hop.is_some() {
            self.close();
        } else {
            self.broken("the server closed the connection".into());
        }
    }

    fn close(&mut self) {
        if self.status == Status::Open {
            self.lose_outstanding();
            self.status = Status::Closed;
        }
    }

    fn lose_outstanding(&mut self) {
        for slot in self.ring.iter_mut().filter(|s| s.state == SlotState::Outstanding) {
            slot.state = SlotState::Free;
            if slot.counted {
                self.stats.lost += 1;
            }
        }
        self.outstanding = 0;
        self.ready.clear();
        self.parked.clear();
    }
}

/// Checks an answer whose ids match its request: a Credit-Control answer with the request's
/// Session-Id and CC-Request-Number (when present) and a Result-Code. Returns the Result-Code
/// (or Experimental-Result-Code, RFC 6733 §7.6).
fn check_answer(conn: &Conn, msg: &MessageRef<'_>, seq: u32, number: u32) -> Result<u32, ProtocolError> {
    if msg.header.command != CommandCode::CREDIT_CONTROL {
        return Err(ProtocolError::Malformed);
    }
    let mut session_ok = false;
    let mut result = None;
    let mut experimental = None;
    let mut answer_number = None;
    for a in msg.avps() {
        let Ok(a) = a else { return Err(ProtocolError::Malformed) };
        if a.vendor.0 != 0 {
            continue;
        }
        match a.code {
            AvpCode::SESSION_ID => session_ok = conn.templates.is_session_id(a.data, seq),
            AvpCode::RESULT_CODE => result = u32_of(a.data),
            AvpCode::EXPERIMENTAL_RESULT => {
                experimental = a
                    .members()
                    .map_while(Result::ok)
                    .find(|m| m.code.0 == EXPERIMENTAL_RESULT_CODE)
                    .and_then(|m| u32_of(m.data));
            }
            AvpCode(CC_REQUEST_NUMBER) => answer_number = u32_of(a.data),
            _ => {}
        }
    }
    if !session_ok {
        return Err(ProtocolError::WrongSessionId);
    }
    if answer_number.is_some_and(|n| n != number) {
        return Err(ProtocolError::WrongRequestNumber);
    }
    result.or(experimental).ok_or(ProtocolError::Malformed)
}

/// RFC 6733 §7.7 Experimental-Result-Code; RFC 4006 §8.2 CC-Request-Number.
const EXPERIMENTAL_RESULT_CODE: u32 = 298;
const CC_REQUEST_NUMBER: u32 = 415;

fn u32_of(data: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(data.try_into().ok()?))
}
