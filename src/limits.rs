//! Every numeric limit gyro enforces, in one place, with units last in each name.
//!
//! TigerBeetle's rule, adopted here: put a limit on everything, name it, and assert the relations
//! between limits at compile time so a change to one cannot silently break another.

/// RFC 6733 §3: the fixed Diameter header is 20 bytes.
pub const HEADER_SIZE_BYTES: usize = 20;

/// RFC 6733 §4.1: an AVP header is 8 bytes, 12 when the V bit adds a Vendor-ID.
pub const AVP_HEADER_SIZE_BYTES: usize = 8;
pub const AVP_HEADER_VENDOR_SIZE_BYTES: usize = 12;

/// Largest message we accept or send. The 24-bit length field allows 16 MiB; credit-control
/// messages are a few KiB, so anything larger is treated as a corrupt stream (RFC 6733 §3 gives
/// no maximum; 64 KiB is what freeDiameter and most stacks use in practice).
pub const MESSAGE_SIZE_MAX_BYTES: usize = 64 * 1024;

/// Deepest Grouped-inside-Grouped nesting we decode (MSCC → USU → Tariff-Change … is 3).
pub const AVP_NESTING_DEPTH_MAX: usize = 8;

/// Most AVPs (at all nesting levels) one message may carry before we answer an error.
pub const AVPS_PER_MESSAGE_MAX: usize = 1024;

/// Most Multiple-Services-Credit-Control AVPs one CCR may carry.
pub const MSCC_PER_REQUEST_MAX: usize = 64;

/// Concurrent Diameter connections the server accepts; further ones are closed at once.
pub const CONNECTIONS_MAX: usize = 1024;

/// Open connections one peer (Origin-Host) may hold unless `diameter.connections_per_peer_max`
/// says otherwise: RFC 6733 §5.1 asks a client for a primary and a secondary peer, and a few
/// links to one server spread its load; more is a peer stuck in a reconnect loop or a
/// misconfiguration, and must not take every slot of `diameter.connections_max`.
pub const CONNECTIONS_PER_PEER_DEFAULT: usize = 16;

const _: () = assert!(CONNECTIONS_PER_PEER_DEFAULT >= 1 && CONNECTIONS_PER_PEER_DEFAULT <= CONNECTIONS_MAX);

/// Requests dispatched but not yet answered on one connection; more get 3004 TOO_BUSY.
pub const IN_FLIGHT_PER_CONNECTION_MAX: usize = 1024;

/// Requests dispatched but not yet answered across all connections (the default, and the
/// most `diameter.in_flight_max` may be). Beyond it every request gets 3004 TOO_BUSY; beyond
/// `SHED_NEW_WORK_PERCENT` of it, new work (CCR-I, CCR-E) does, so sessions already open keep
/// being served while load is shed.
pub const IN_FLIGHT_TOTAL_MAX: usize = 16_384;

/// Share of the server-wide in-flight limit above which new work is refused with 3004.
pub const SHED_NEW_WORK_PERCENT: usize = 75;

const _: () = assert!(SHED_NEW_WORK_PERCENT > 0 && SHED_NEW_WORK_PERCENT < 100);

/// Queue-delay overload control (see `net::connection`): a connection whose every read has
/// filled the read buffer for this long (its socket never drained: requests wait in the kernel,
/// where the in-flight count cannot see them) refuses new work (CCR-I, CCR-E) with 3004 ...
pub const BEHIND_SHED_NEW_WORK_MS: u64 = 100;
/// ... and after this long also updates (CCR-U); terminations are still served, since they end
/// sessions and free their reservations. Both well inside a client's Tx timer (RFC 4006 §13:
/// typically seconds), so a shed request is answered while the client can still fail over.
pub const BEHIND_SHED_UPDATES_MS: u64 = 400;

const _: () = assert!(BEHIND_SHED_NEW_WORK_MS < BEHIND_SHED_UPDATES_MS);

/// Answers queued for one connection's writer before the reader stops reading (backpressure).
pub const WRITE_QUEUE_PER_CONNECTION_MAX: usize = 4096;

/// Bytes the writer gathers into one write syscall.
pub const WRITE_BATCH_MAX_BYTES: usize = 256 * 1024;

/// RFC 6733 §5.5.4: duplicates must be detected for at least the time a client may retransmit;
/// 4 minutes matches TCP's 2×MSL and jDiameter's default.
pub const DUPLICATE_WINDOW_MS: u64 = 240_000;

/// Answers remembered for transport-level duplicate detection, across all peers.
pub const DUPLICATE_ENTRIES_MAX: usize = 262_144;

/// Shards of the duplicate cache; a power of two so the shard is a mask of the hash.
pub const DUPLICATE_SHARDS: usize = 64;

/// RFC 3539 §3.4.1: Tw defaults to 30 s and must not be below 6 s.
pub const WATCHDOG_INTERVAL_MS_DEFAULT: u64 = 30_000;
pub const WATCHDOG_INTERVAL_MS_MIN: u64 = 6_000;

/// RFC 3539 §3.4.1: jitter of ±2 s around Tw, so peers do not synchronise.
pub const WATCHDOG_JITTER_MS: u64 = 2_000;

/// How long a fresh connection may take to send its CER before it is closed.
pub const CER_TIMEOUT_MS: u64 = 10_000;

/// How long a TLS client may take to complete its handshake (RFC 6733 §13: before the CER).
/// It holds a connection slot meanwhile, so a stalled handshake must not hold it for longer
/// than a stalled CER would.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// How long we wait for DPA (and for the peer to close) during graceful shutdown.
pub const DPA_TIMEOUT_MS: u64 = 3_000;

/// Longest Error-Message text we put on the wire.
pub const ERROR_MESSAGE_MAX_BYTES: usize = 256;

/// Longest DiameterIdentity (RFC 6733 §4.3.1 derives from FQDN limits: 255 octets).
pub const DIAMETER_IDENTITY_MAX_BYTES: usize = 255;

/// Dictionary files read from one directory, and AVP definitions in a dictionary set.
pub const DICTIONARY_FILES_MAX: usize = 256;
pub const DICTIONARY_AVPS_MAX: usize = 65_536;

const _: () = assert!(HEADER_SIZE_BYTES < MESSAGE_SIZE_MAX_BYTES);
const _: () = assert!(MESSAGE_SIZE_MAX_BYTES < (1 << 24)); // Fits the 24-bit length field.
const _: () = assert!(MESSAGE_SIZE_MAX_BYTES.is_multiple_of(4));
const _: () = assert!(WRITE_BATCH_MAX_BYTES >= MESSAGE_SIZE_MAX_BYTES);
const _: () = assert!(DUPLICATE_SHARDS.is_power_of_two());
const _: () = assert!(DUPLICATE_ENTRIES_MAX.is_multiple_of(DUPLICATE_SHARDS));
const _: () = assert!(WATCHDOG_INTERVAL_MS_DEFAULT >= WATCHDOG_INTERVAL_MS_MIN);
const _: () = assert!(WATCHDOG_JITTER_MS < WATCHDOG_INTERVAL_MS_MIN);
const _: () = assert!(IN_FLIGHT_PER_CONNECTION_MAX <= WRITE_QUEUE_PER_CONNECTION_MAX);
const _: () = assert!(MSCC_PER_REQUEST_MAX < AVPS_PER_MESSAGE_MAX);
const _: () = assert!(TLS_HANDSHAKE_TIMEOUT_MS <= CER_TIMEOUT_MS);

/// A peer that does not read its answers for this long is considered dead.
pub const WRITE_TIMEOUT_MS: u64 = 30_000;
/// How long a server-initiated request (RAR, ASR) waits for its answer before it is sent once
/// more on another connection to the same peer, or given up (RFC 6733 §5.5.4).
pub const SERVER_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Server-initiated requests queued for one connection's task at most; beyond, the sender
/// fails at once rather than wait behind a stuck connection.
pub const SERVER_REQUESTS_QUEUED_MAX: usize = 256;

/// Bytes asked of the kernel per read; the read buffer never holds more than one maximum-size
/// message plus one read.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Longest Validity-Time a plan may give a grant (a grant's reservation lives this long plus
/// the Tcc grace).
pub const VALIDITY_TIME_S_MAX: u64 = 43_200;

/// Longest Tcc grace `charging.tcc_grace_ms` may add.
pub const TCC_GRACE_MS_MAX: u64 = 3_600_000;

// A reservation's deadline (Validity-Time + grace) stays within what the ledger accepts.
const _: () = assert!(VALIDITY_TIME_S_MAX * 1000 + TCC_GRACE_MS_MAX < crate::ledger::RESERVATION_TTL_MS_MAX);

/// Largest payload of one journal record. Ledger and session changes are tens of bytes and a
/// settlement record a few hundred; the bound keeps a corrupt length field from sending recovery
/// far past the record, and it is what lets recovery resynchronise cheaply after a bad record.
pub const JOURNAL_RECORD_MAX_BYTES: usize = 1024 * 1024;

/// Bytes of appended records waiting for the journal writer before `append` blocks
/// (backpressure instead of unbounded memory while a disk stalls). The writer holds a second
/// buffer of at most this size while it writes, so the journal's buffers stay below twice this.
pub const JOURNAL_BUFFER_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Size after which the journal starts a new segment file, unless configured otherwise.
pub const JOURNAL_SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Largest `journal.segment_mib`: recovery reads one segment into memory at a time.
pub const JOURNAL_SEGMENT_MIB_MAX: u64 = 1024;

/// Most snapshots `journal.snapshots_kept` may retain.
pub const JOURNAL_SNAPSHOTS_KEPT_MAX: usize = 64;

// One buffer holds at least one maximum-size record with its header, and a payload length
// leaves the top two bits of the record's length word free for the group and batch flags.
const _: () =
    assert!(JOURNAL_BUFFER_MAX_BYTES >= crate::journal::RECORD_HEADER_BYTES + JOURNAL_RECORD_MAX_BYTES);
const _: () = assert!(JOURNAL_RECORD_MAX_BYTES < (1 << 30));
const _: () = assert!(JOURNAL_SEGMENT_BYTES_DEFAULT <= JOURNAL_SEGMENT_MIB_MAX * 1024 * 1024);

/// Most lines one invoice may have: one per rating group of a session, and a session's rating
/// groups are bounded by the MSCCs its requests may carry.
pub const INVOICE_LINES_MAX: usize = MSCC_PER_REQUEST_MAX;

/// Most attempts a payment may make before it is dead-lettered (`settlement.retry`).
pub const PAYMENT_ATTEMPTS_MAX: u32 = 64;

/// Longest `settlement.stripe.timeout_ms`, `connect_timeout_ms` and `settlement.webhook.timeout_ms`:
/// a payment call that has not answered in two minutes is treated as unknown and looked up,
/// and holding the worker's slot longer only delays the others.
pub const PAYMENT_HTTP_TIMEOUT_MS_MAX: u64 = 120_000;

/// Largest HTTP response body a payment adapter reads. A PaymentIntent is a few KiB, a search
/// result of one or two of them not much more; a bigger body is not an answer we can trust, and
/// the bound keeps a misbehaving gateway from filling memory.
pub const PAYMENT_RESPONSE_MAX_BYTES: usize = 256 * 1024;

/// Longest catalog `gateway_customer` and `payment_method_id`: Stripe's ids are tens of bytes;
/// the bound keeps a pasted document out of every charge request.
pub const GATEWAY_REF_MAX_BYTES: usize = 255;

/// Largest secret file (`secret_key_file`, `secret_file`, `settlement.smtp.password_file`)
/// read: keys are tens of bytes.
pub const PAYMENT_SECRET_MAX_BYTES: u64 = 4096;

/// Longest `settlement.smtp.timeout_ms`: RFC 5321 §4.5.3.2 lets a server take up to 10 minutes
/// after the end of data; a relay slower than 5 minutes is treated as failing (transient) and
/// tried again later rather than holding the worker.
pub const SMTP_TIMEOUT_MS_MAX: u64 = 300_000;

/// Largest `settlement.smtp.ca_file` read (a CA bundle of a few hundred certificates).
pub const SMTP_CA_FILE_MAX_BYTES: u64 = 1 << 20;

/// Largest `settlement.postgres.ca_file` read, for the same reason.
pub const POSTGRES_CA_FILE_MAX_BYTES: u64 = SMTP_CA_FILE_MAX_BYTES;

/// Largest `[diameter.tls]` PEM file read (certificate chain, key, client CA bundle).
pub const TLS_PEM_FILE_MAX_BYTES: u64 = SMTP_CA_FILE_MAX_BYTES;

/// How old a webhook signature's timestamp may be when a receiver checks it (Stripe's default):
/// it bounds the window in which a captured request can be replayed.
pub const WEBHOOK_SIGNATURE_TOLERANCE_S: i64 = 300;

/// Most settlements waiting in the outbox: beyond it the engine still charges and answers, but a
/// new settlement is dropped with an error log (the worker is far behind or stopped).
pub const SETTLEMENTS_PENDING_MAX: usize = 1 << 20;

/// Settlements the worker advances at once: their step records share the journal's group
/// commits, their documents one `syncfs`, and their sandbox charges one books sync. Each waits
/// for two to four syncs in a row, so the worker's rate is about this many ÷ that chain's
/// latency: 16 left group commits of two records and ≈ 1 200 settlements/s on an ext4 disk
/// (ARCHITECTURE.md, "Settlement").
pub const SETTLEMENTS_IN_FLIGHT_MAX: usize = 256;
