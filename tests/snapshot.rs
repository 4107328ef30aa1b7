//! Snapshots by replay (`durable::checkpoint`): the state a snapshot plus the journal after it
//! recover is the live state, old segments go, and a retransmission after the snapshot is
//! still answered from the recovered session. In-process, on the demo catalog, no network.

use bytes::BytesMut;
use gyro::catalog::{Catalog, SubscriptionKind};
use gyro::cc::{EngineConfig, Now};
use gyro::diameter::encode::spec;
use gyro::diameter::{
    ApplicationId, AvpSpec, CommandCode, CommandFlags, Encoder, LocalIdentity, MessageRef, ResultCode,
};
use gyro::durable::{checkpoint, start, Sink, Started};
use gyro::journal::JournalConfig;
use gyro::ledger::AccountView;

fn local() -> LocalIdentity {
    LocalIdentity {
        origin_host: "gyro.test".into(),
        origin_realm: "test".into(),
        host_ip_addresses: vec![],
        vendor_id: 0,
        product_name: "gyro".into(),
        firmware_revision: 0,
        origin_state_id: 1,
    }
}

const NOW: Now = Now { mono_ms: 1_000, unix_secs: 1_796_000_000 };

/// A CCR for the data service: `used` octets reported, a new grant asked for unless CCR-T.
fn ccr(session: &str, msisdn: &str, kind: u32, number: u32, used: Option<u64>) -> Vec<u8> {
    let mut b = BytesMut::new();
    let mut e = Encoder::new(
        &mut b,
        CommandFlags(CommandFlags::REQUEST | CommandFlags::PROXIABLE),
        CommandCode::CREDIT_CONTROL,
        ApplicationId::CREDIT_CONTROL,
        number,
        number,
    );
    e.str(spec::SESSION_ID, session);
    e.str(spec::ORIGIN_HOST, "pgw.test").str(spec::ORIGIN_REALM, "test");
    e.str(spec::DESTINATION_REALM, "test").u32(spec::AUTH_APPLICATION_ID, 4);
    e.str(AvpSpec::mandatory(461), if kind == 4 { "32274@3gpp.org" } else { "32251@3gpp.org" });
    e.u32(AvpSpec::mandatory(416), kind).u32(AvpSpec::mandatory(415), number);
    let g = e.begin_group(AvpSpec::mandatory(443));
    e.u32(AvpSpec::mandatory(450), 0).str(AvpSpec::mandatory(444), msisdn);
    e.end_group(g);
    if kind == 4 {
        e.u32(AvpSpec::mandatory(436), 0); // Requested-Action DIRECT_DEBITING
    } else {
        let m = e.begin_group(AvpSpec::mandatory(456));
        if kind != 3 {
            let r = e.begin_group(AvpSpec::mandatory(437));
            e.end_group(r);
        }
        if let Some(octets) = used {
            let u = e.begin_group(AvpSpec::mandatory(446));
            e.u64(AvpSpec::mandatory(421), octets);
            e.end_group(u);
        }
        e.u32(AvpSpec::mandatory(432), 10);
        e.end_group(m);
    }
    e.finish();
    b.to_vec()
}

fn result_code(answer: &[u8]) -> ResultCode {
    let msg = MessageRef::parse(answer).expect("an answer frames");
    let rc = msg.find(gyro::diameter::AvpCode(268)).expect("Result-Code");
    ResultCode(u32::from_be_bytes(rc.data.try_into().unwrap()))
}

struct Node {
    started: Started,
}

impl Node {
    fn open(dir: &std::path::Path) -> Self {
        let mut cfg = JournalConfig::new(dir);
        cfg.segment_bytes = 4096; // several segments, so pruning has something to delete
        let started = start(Catalog::demo_toml(), EngineConfig::new(&local()), Some(cfg), NOW)
            .expect("the engine starts");
        Self { started }
    }

    /// Handles a request through the journal and returns the answer once it is durable.
    fn send(&self, req: &[u8]) -> Vec<u8> {
        let (journal, _) = self.started.journal.as_ref().unwrap();
        let msg = MessageRef::parse(req).unwrap();
        let mut out = BytesMut::new();
        let mut sink = Sink::new(journal, None);
        // With no Reply the sink still journals; the answer stays ours to read.
        let answer_in_sink = self.started.engine.handle_with(NOW, &msg, &mut out, &mut CopySink(&mut sink));
        assert!(!answer_in_sink);
        if let Some(lsn) = sink.lsn {
            journal.wait_durable(lsn).unwrap();
        }
        out.to_vec()
    }

    fn views(&self) -> Vec<AccountView> {
        let ledger = self.started.engine.ledger();
        (0..ledger.stats().accounts).map(|i| ledger.view(gyro::ledger::AccountId(i)).unwrap()).collect()
    }
}

/// Journals through `Sink` but leaves the answer in `out` (the test reads it there).
struct CopySink<'a, 'b>(&'a mut Sink<'b>);

impl gyro::cc::RecordSink for CopySink<'_, '_> {
    fn append(&mut self, record: &[u8], answer: &[u8]) -> bool {
        self.0.append(record, answer);
        false
    }
}

fn same_state(a: &Node, b: &Node) {
    let (va, vb) = (a.views(), b.views());
    assert_eq!(va.len(), vb.len());
    for (x, y) in va.iter().zip(&vb) {
        assert_eq!((x.id, x.balance, x.reserved, x.status), (y.id, y.balance, y.reserved, y.status));
        let units = |v: &AccountView| v.bundles.iter().map(|b| (b.remaining, b.reserved)).collect::<Vec<_>>();
        assert_eq!(units(x), units(y), "bundles of account {}", x.id.0);
        assert_eq!(x.reservations, y.reservations, "holds of account {}", x.id.0);
    }
    assert_eq!(a.started.engine.open_sessions(), b.started.engine.open_sessions());
    assert!(b.started.engine.ledger().check_conservation());
}

#[test]
fn snapshot_plus_tail_recovers_the_live_state_and_prunes_segments() {
    let dir = tempfile::tempdir().unwrap();
    let live = Node::open(dir.path());
    // Alice (bundle first) and Erin (money, short funds) run data sessions; Alice sends an SMS.
    for (who, msisdn) in [("alice", "491700000001"), ("erin", "491700000005")] {
        let s = format!("pgw.test;1;{who}");
        assert_eq!(result_code(&live.send(&ccr(&s, msisdn, 1, 0, None))), ResultCode::SUCCESS);
        for n in 1..=20u32 {
            live.send(&ccr(&s, msisdn, 2, n, Some(100_000)));
        }
    }
    live.send(&ccr("smsc.test;1;sms1", "491700000001", 4, 0, None));
    let (journal, _) = live.started.journal.as_ref().unwrap();
    let engine_cfg = live.started.engine_cfg.clone();
    let done = checkpoint(journal, &engine_cfg, 1, NOW).unwrap().expect("a snapshot is taken");
    assert_eq!(done.lsn, journal.stats().durable_lsn);
    assert!(done.pruned_segments > 0, "segments before the snapshot are deleted: {done:?}");
    // Nothing new: no second snapshot.
    assert_eq!(checkpoint(journal, &engine_cfg, 1, NOW).unwrap(), None);
    // Traffic after the snapshot: more usage, Erin's session ends.
    for n in 21..=25u32 {
        live.send(&ccr("pgw.test;1;alice", "491700000001", 2, n, Some(50_000)));
    }
    live.send(&ccr("pgw.test;1;erin", "491700000005", 3, 21, Some(1_000)));

    // A second node on the same directory (the live one's journal stays open but idle).
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    let recovered = Node::open(copy.path());
    let (_, report) = recovered.started.journal.as_ref().unwrap();
    assert_eq!(report.records_replayed, 6, "only the records after the snapshot are replayed");
    same_state(&live, &recovered);

    // Alice's latest CCR-U (number 25, after the snapshot) retransmitted: the recovered session
    // gives the same answer as the live one, and charges nothing again.
    let last = ccr("pgw.test;1;alice", "491700000001", 2, 25, Some(50_000));
    let mut again = last.clone();
    again[4] |= CommandFlags::RETRANSMIT;
    let before = recovered.views();
    let a1 = live.send(&again);
    let a2 = recovered.send(&again);
    assert_eq!(a1, a2, "the recovered session answers a retransmission as the live one does");
    assert_eq!(before[0].balance, recovered.views()[0].balance);
    let alice = recovered.started.engine.ledger().lookup(SubscriptionKind::E164, "491700000001").unwrap();
    assert_eq!(alice.0, 0);
}

/// A recovered session has its Session-Id and its client's Origin-Host, whether the journal
/// (the CCR-I's record) or a snapshot (the CCR-I before it) brought them back.
#[test]
fn recovered_sessions_keep_their_session_id_and_origin_host() {
    let dir = tempfile::tempdir().unwrap();
    let live = Node::open(dir.path());
    let copy_of = |dir: &std::path::Path| {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir, copy.path());
        copy
    };
    let names = |node: &Node, id: &str| {
        let v = node.started.engine.session(NOW, id).expect("the session is recovered");
        (v.session_id, v.origin_host, v.request_number)
    };
    let before = "pgw.test;1;before-snapshot";
    assert_eq!(result_code(&live.send(&ccr(before, "491700000001", 1, 0, None))), ResultCode::SUCCESS);
    live.send(&ccr(before, "491700000001", 2, 1, Some(1_000)));

    // From the journal alone.
    let journal_copy = copy_of(dir.path());
    let from_journal = Node::open(journal_copy.path());
    let want = (Some(before.to_owned()), Some("pgw.test".to_owned()), 1);
    assert_eq!(names(&from_journal, before), want);

    // From a snapshot: the CCR-I is before it, a CCR-U (an image without names) after it.
    let (journal, _) = live.started.journal.as_ref().unwrap();
    checkpoint(journal, &live.started.engine_cfg, 1, NOW).unwrap().expect("a snapshot is taken");
    live.send(&ccr(before, "491700000001", 2, 2, Some(1_000)));
    let snapshot_copy = copy_of(dir.path());
    let from_snapshot = Node::open(snapshot_copy.path());
    let (_, report) = from_snapshot.started.journal.as_ref().unwrap();
    assert_eq!(report.records_replayed, 1, "only the CCR-U after the snapshot is replayed");
    let want = (Some(before.to_owned()), Some("pgw.test".to_owned()), 2);
    assert_eq!(names(&from_snapshot, before), want);
    let listed = from_snapshot.started.engine.sessions(NOW, gyro::cc::SessionFilter::All, None, 10);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].session_id.as_deref(), Some(before));
}

/// Copies a data directory (files and the `catalogs/` directory) as a crash would leave it.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            // The journal's spare thread renames files while the live node runs: one listed a
            // moment ago may be gone, as it would be in a crash at that moment.
            match std::fs::copy(entry.path(), target) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => {
                    other.unwrap();
                }
            }
        }
    }
}

/// Catalog changes are journal records: a catalog file installed (here with a new account) and
/// an admin edit (another account). A restart replays both from the journal; a snapshot taken
/// after them names the catalog in force (stored as a file) and when each range of accounts
/// began, so a restart from the snapshot alone has them too.
#[test]
fn catalog_changes_are_recovered_from_the_journal_and_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let live = Node::open(dir.path());
    let catalogs = &live.started.catalogs;
    let first = catalogs.live().current().digest.clone();
    let text = Catalog::demo_toml().to_owned()
        + "\n[[accounts]]\ncustomer = \"c-erin\"\nsubscription_ids = [\"e164:491700000099\"]\nfunding = \"prepaid\"\nbalance = \"1.00\"\n";
    let done = catalogs.install("test", &text, NOW).unwrap();
    assert_eq!((done.unchanged, done.accounts_added, done.previous.as_str()), (false, 1, first.as_str()));
    let body = serde_json::json!({ "customer": "c-alice", "subscription_ids": ["e164:491700000098"], "funding": "prepaid" });
    let edited = catalogs.edit(&gyro::catalog::Edit::AddAccount { body }, NOW).unwrap();
    assert_eq!((edited.accounts_added, edited.previous.as_str()), (1, done.digest.as_str()));
    assert_eq!(
        result_code(&live.send(&ccr("pgw.test;1;new", "491700000099", 1, 0, None))),
        ResultCode::SUCCESS
    );
    assert_eq!(
        result_code(&live.send(&ccr("pgw.test;1;ed", "491700000098", 1, 0, None))),
        ResultCode::SUCCESS
    );
    let check = |node: &Node| {
        assert_eq!(node.started.catalogs.live().current().digest, edited.digest);
        assert_eq!(node.started.engine.ledger().stats().accounts, 7);
        let ledger = node.started.engine.ledger();
        assert_eq!(ledger.lookup(SubscriptionKind::E164, "491700000099").map(|a| a.0), Some(5));
        assert_eq!(ledger.lookup(SubscriptionKind::E164, "491700000098").map(|a| a.0), Some(6));
        same_state(&live, node);
    };
    // From the journal.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    check(&Node::open(copy.path()));
    // From a snapshot taken after the changes: the catalog in force, stored as a file.
    let (journal, _) = live.started.journal.as_ref().unwrap();
    checkpoint(journal, &live.started.engine_cfg, 1, NOW).unwrap().expect("a snapshot is taken");
    let snap = gyro::journal::snapshot::newest_valid(dir.path()).unwrap().unwrap();
    let state = gyro::cc::CatalogState::of_snapshot(&snap.body).expect("the snapshot names its catalog");
    assert_eq!(state.version, edited.digest);
    assert_eq!(state.epochs.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 5, 6]);
    let stored = dir.path().join("catalogs").join(format!("{}.toml", state.file));
    assert!(std::fs::read_to_string(stored).unwrap().contains("491700000098"));
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    let recovered = Node::open(copy.path());
    assert_eq!(recovered.started.journal.as_ref().unwrap().1.records_replayed, 0);
    check(&recovered);
}
