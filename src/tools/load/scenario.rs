//! What `gyro load` sends: the scenarios (data, voice, SMS and a weighted mix), which subscriber
//! a new session picks, and the pre-encoded request templates.
//!
//! A template is a whole request encoded once with the ordinary [`Encoder`] at start-up; sending
//! copies it into the write buffer and patches the fields that vary in place: the header's
//! Hop-by-Hop and End-to-End ids, the session number at the end of the Session-Id, the
//! CC-Request-Number, Event-Timestamp, the subscriber's MSISDN and IMSI, and the 3GPP-Charging-Id.
//! Every patched field has a fixed width (ids and numbers are Unsigned32, digits are zero-padded
//! to a width chosen up front), so patching never moves a byte and lengths never change.

use std::fmt;
use std::str::FromStr;

use bytes::BytesMut;
use clap::ValueEnum;

use crate::diameter::encode::spec;
use crate::diameter::{
    ApplicationId, AvpIter, AvpRef, AvpSpec, CommandCode, CommandFlags, Encoder, MessageRef, VendorId,
};
use crate::tools::ccr::avp;

/// Width of the session number at the end of every Session-Id: an Unsigned32 in decimal.
pub const SESSION_DIGITS: usize = 10;

/// E.164 numbers have at most 15 digits (ITU-T E.164 §6), and so do the catalog's MSISDNs.
pub const MSISDN_DIGITS_MAX: usize = 15;

/// The IMSI we send beside the MSISDN: MCC 262, MNC 01 (a German test range) and the
/// subscriber's index in ten digits, 15 digits in all as ITU-T E.212 allows.
const IMSI_PREFIX: &str = "26201";
const IMSI_INDEX_DIGITS: usize = 10;

/// Octets reported per data update (1 MiB: ¼ up, ¾ down) and seconds per voice update.
pub const DATA_OCTETS_PER_UPDATE: u64 = 1_048_576;
const DATA_INPUT_OCTETS_PER_UPDATE: u64 = 262_144;
const DATA_OUTPUT_OCTETS_PER_UPDATE: u64 = DATA_OCTETS_PER_UPDATE - DATA_INPUT_OCTETS_PER_UPDATE;
pub const VOICE_SECONDS_PER_UPDATE: u32 = 60;

/// The first data rating group; with `--rating-groups N` the MSCCs carry this and the next N − 1.
pub const DATA_RATING_GROUP_FIRST: u32 = 10;
/// The rating group of voice MSCCs.
pub const VOICE_RATING_GROUP: u32 = 100;

/// RFC 4006 §8.15 Termination-Cause DIAMETER_LOGOUT.
const TERMINATION_CAUSE_LOGOUT: u32 = 1;
/// TS 32.299 §7.2.175 Reporting-Reason: QUOTA_EXHAUSTED on updates, FINAL at termination.
const REPORTING_REASON_QUOTA_EXHAUSTED: u32 = 3;
const REPORTING_REASON_FINAL: u32 = 2;
/// RFC 4006 §8.41 Requested-Action DIRECT_DEBITING.
const REQUESTED_ACTION_DIRECT_DEBITING: u32 = 0;

/// 3GPP AVPs of Service-Information (TS 32.299 §7.2, TS 29.061 §16.4.7), vendor 10415.
mod tgpp {
    use crate::diameter::AvpSpec;

    pub(super) const SERVICE_INFORMATION: AvpSpec = AvpSpec::tgpp(873);
    pub(super) const PS_INFORMATION: AvpSpec = AvpSpec::tgpp(874);
    pub(super) const IMS_INFORMATION: AvpSpec = AvpSpec::tgpp(876);
    pub(super) const SMS_INFORMATION: AvpSpec = AvpSpec::tgpp(2000);
    pub(super) const CHARGING_ID: AvpSpec = AvpSpec::tgpp(2);
    pub(super) const IMSI_MCC_MNC: AvpSpec = AvpSpec::tgpp(8);
    pub(super) const RAT_TYPE: AvpSpec = AvpSpec::tgpp(21);
    pub(super) const USER_LOCATION_INFO: AvpSpec = AvpSpec::tgpp(22);
    pub(super) const ROLE_OF_NODE: AvpSpec = AvpSpec::tgpp(829);
    pub(super) const CALLED_PARTY_ADDRESS: AvpSpec = AvpSpec::tgpp(832);
    pub(super) const NODE_FUNCTIONALITY: AvpSpec = AvpSpec::tgpp(862);
    pub(super) const DATA_CODING_SCHEME: AvpSpec = AvpSpec::tgpp(2001);
    pub(super) const SM_MESSAGE_TYPE: AvpSpec = AvpSpec::tgpp(2007);
    pub(super) const SMSC_ADDRESS: AvpSpec = AvpSpec::tgpp(2017);
    /// RFC 4005 / RFC 7155 Called-Station-Id: the APN inside PS-Information.
    pub(super) const CALLED_STATION_ID: AvpSpec = AvpSpec::mandatory(30);
}

/// What kind of traffic a session is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Gy (32251): CCR-I, updates reporting octets, CCR-T.
    Data,
    /// IMS voice (32260): CCR-I, updates reporting seconds, CCR-T.
    Voice,
    /// SMS (32274): one CCR-E with DIRECT_DEBITING of one message.
    Sms,
}

impl Kind {
    pub const ALL: [Self; 3] = [Self::Data, Self::Voice, Self::Sms];

    pub fn name(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Voice => "voice",
            Self::Sms => "sms",
        }
    }

    /// The first request of a session of this kind.
    pub fn first_step(self) -> Step {
        match self {
            Self::Sms => Step::Event,
            Self::Data | Self::Voice => Step::Initial,
        }
    }
}

/// `--scenario`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Scenario {
    Data,
    Voice,
    Sms,
    /// Sessions of every kind, picked by the `--mix` weights.
    Mix,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Voice => "voice",
            Self::Sms => "sms",
            Self::Mix => "mix",
        }
    }
}

/// The CC-Request-Type a session sends next (RFC 4006 §8.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Step {
    Initial,
    Update,
    Terminate,
    Event,
}

impl Step {
    fn wire(self) -> u32 {
        match self {
            Self::Initial => 1,
            Self::Update => 2,
            Self::Terminate => 3,
            Self::Event => 4,
        }
    }

    fn index(self) -> usize {
        self.wire() as usize - 1
    }
}

/// `--mix data=8,voice=1,sms=1`: relative weights of the kinds of new sessions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Mix {
    /// Indexed like [`Kind::ALL`].
    pub weights: [u32; 3],
}

impl Default for Mix {
    /// Mostly data, as on a mobile network: 8 data sessions for each voice call and SMS.
    fn default() -> Self {
        Self { weights: [8, 1, 1] }
    }
}

impl Mix {
    /// The weights of one scenario: all of one kind, or the mix.
    pub fn for_scenario(scenario: Scenario, mix: Self) -> Self {
        match scenario {
            Scenario::Data => Self { weights: [1, 0, 0] },
            Scenario::Voice => Self { weights: [0, 1, 0] },
            Scenario::Sms => Self { weights: [0, 0, 1] },
            Scenario::Mix => mix,
        }
    }

    pub fn includes(&self, kind: Kind) -> bool {
        self.weights[kind as usize] > 0
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> =
            Kind::ALL.iter().map(|k| format!("{}={}", k.name(), self.weights[*k as usize])).collect();
        f.write_str(&parts.join(","))
    }
}

/// What is wrong with a `--mix` value; the text goes after "invalid value ... for '--mix'".
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum MixError {
    #[error("\"{part}\" is not KIND=WEIGHT (e.g. data=8,voice=1,sms=1)")]
    NotKeyValue { part: String },
    #[error("unknown kind \"{kind}\" (expected data, voice or sms)")]
    UnknownKind { kind: String },
    #[error("weight \"{weight}\" of {kind} is not a whole number")]
    BadWeight { kind: &'static str, weight: String },
    #[error("{kind} is given twice")]
    Repeated { kind: &'static str },
    #[error("every weight is 0; at least one kind needs a weight")]
    AllZero,
}

impl FromStr for Mix {
    type Err = MixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut weights = [0u32; 3];
        let mut given = [false; 3];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) =
                part.split_once('=').ok_or_else(|| MixError::NotKeyValue { part: part.to_owned() })?;
            let kind = match key.trim() {
                "data" => Kind::Data,
                "voice" => Kind::Voice,
                "sms" => Kind::Sms,
                other => return Err(MixError::UnknownKind { kind: other.to_owned() }),
            };
            let weight = value
                .trim()
                .parse::<u32>()
                .map_err(|_| MixError::BadWeight { kind: kind.name(), weight: value.to_owned() })?;
            if std::mem::replace(&mut given[kind as usize], true) {
                return Err(MixError::Repeated { kind: kind.name() });
            }
            weights[kind as usize] = weight;
        }
        if weights.iter().all(|&w| w == 0) {
            return Err(MixError::AllZero);
        }
        Ok(Self { weights })
    }
}

/// `--skew`: how a new session picks its subscriber.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Skew {
    /// Every subscriber equally likely.
    Uniform,
    /// Zipf's law with this exponent: the subscriber of rank k is picked with probability
    /// proportional to 1/k^S, so a few subscribers carry much of the traffic (hot accounts).
    Zipf(f64),
}

impl fmt::Display for Skew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uniform => f.write_str("uniform"),
            Self::Zipf(s) => write!(f, "zipf:{s}"),
        }
    }
}

/// The largest Zipf exponent accepted: beyond it nearly every pick is the first subscriber.
pub const ZIPF_EXPONENT_MAX: f64 = 100.0;

#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("expected uniform or zipf:S with S a number above 0 and at most {ZIPF_EXPONENT_MAX} (e.g. zipf:1.1)")]
pub struct SkewError;

impl FromStr for Skew {
    type Err = SkewError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "uniform" {
            return Ok(Self::Uniform);
        }
        let exponent = s.strip_prefix("zipf:").and_then(|e| e.parse::<f64>().ok()).ok_or(SkewError)?;
        if !(exponent > 0.0 && exponent <= ZIPF_EXPONENT_MAX) {
            return Err(SkewError);
        }
        Ok(Self::Zipf(exponent))
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a fast, well-mixed 64-bit generator. Load generation
/// needs spread, not secrecy, and one per connection keeps the generator lock-free.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias for n ≪ 2^64 is negligible).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [0, 1), 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Zipf-distributed ranks 1..=n by rejection-inversion (W. Hörmann, G. Derflinger, "Rejection-
/// inversion to generate variates from monotone discrete distributions", ACM TOMACS 6(3), 1996),
/// as Apache Commons RNG implements it: O(1) memory and time per sample for any exponent > 0,
/// where a table of n cumulative weights would cost 8 bytes per subscriber.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: f64,
    exponent: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    s: f64,
}

impl Zipf {
    pub fn new(n: u64, exponent: f64) -> Self {
        let mut z = Self { n: n as f64, exponent, h_integral_x1: 0.0, h_integral_n: 0.0, s: 0.0 };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(z.n + 0.5);
        z.s = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z
    }

    /// A rank in 1..=n; rank 1 is the most likely.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        loop {
            let u = self.h_integral_n + rng.unit() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.s || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }

    fn h(&self, x: f64) -> f64 {
        (-self.exponent * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.exponent) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        // The argument of log1p must stay above −1; rounding can push it just past.
        let t = (x * (1.0 - self.exponent)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// log(1 + x) / x, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// (exp(x) − 1) / x, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

/// The subscribers a run uses: E.164 MSISDNs `first .. first + count`, all with as many digits
/// as `first` has (so the MSISDN is patched in place).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Subscribers {
    pub first: u64,
    pub count: u64,
}

impl Subscribers {
    pub fn digits(&self) -> usize {
        decimal_digits(self.first)
    }

    pub fn msisdn(&self, index: u64) -> u64 {
        self.first + index
    }
}

/// Digits of `v` in decimal.
pub fn decimal_digits(v: u64) -> usize {
    v.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// A bijection of `0..n` that scatters Zipf ranks over the subscriber range: the hot
/// subscribers are then not neighbours in the ledger's account chunks and lock shards, as real
/// hot subscribers are not. Multiplying by a prime above any n we accept is a permutation
/// modulo n because the prime and n are coprime.
const SCATTER_PRIME: u64 = 4_294_967_311;

/// Picks the kind and subscriber of each new session.
#[derive(Clone, Debug)]
pub struct Chooser {
    /// Cumulative weights, indexed like [`Kind::ALL`].
    cumulative: [u64; 3],
    subscribers: u64,
    zipf: Option<Zipf>,
}

impl Chooser {
    pub fn new(mix: Mix, subscribers: u64, skew: Skew) -> Self {
        let mut cumulative = [0u64; 3];
        let mut sum = 0u64;
        for (c, w) in cumulative.iter_mut().zip(mix.weights) {
            sum += u64::from(w);
            *c = sum;
        }
        let zipf = match skew {
            Skew::Uniform => None,
            Skew::Zipf(s) => Some(Zipf::new(subscribers, s)),
        };
        Self { cumulative, subscribers, zipf }
    }

    pub fn kind(&self, rng: &mut Rng) -> Kind {
        let total = self.cumulative[2];
        let pick = rng.below(total);
        let i = self.cumulative.iter().position(|&c| pick < c).unwrap_or(0);
        Kind::ALL[i]
    }

    /// A subscriber index in `0..subscribers`.
    pub fn subscriber(&self, rng: &mut Rng) -> u64 {
        match &self.zipf {
            None => rng.below(self.subscribers),
            Some(z) => {
                let rank = z.sample(rng) - 1;
                ((u128::from(rank) * u128::from(SCATTER_PRIME)) % u128::from(self.subscribers)) as u64
            }
        }
    }
}

/// Who the generator is on the Diameter network, and where requests go.
#[derive(Clone, Debug)]
pub struct Identity {
    pub origin_host: String,
    pub origin_realm: String,
    pub destination_realm: String,
    /// RFC 6733 §8.16: a new value per run (every run starts without state).
    pub origin_state_id: u32,
}

/// The fields of one request that differ from its template.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fields {
    pub hop_by_hop: u32,
    pub end_to_end: u32,
    /// The session's number: the last digits of its Session-Id, and its 3GPP-Charging-Id.
    pub session: u32,
    pub number: u32,
    pub subscriber: u64,
    /// Event-Timestamp, NTP seconds.
    pub ntp_secs: u32,
}

/// One pre-encoded request and where its varying fields are.
#[derive(Clone, Debug)]
pub struct Template {
    bytes: Vec<u8>,
    session: usize,
    number: usize,
    timestamp: usize,
    msisdn: usize,
    imsi: usize,
    charging_id: Option<usize>,
}

impl Template {
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends the request with `fields` patched in. Copies the template once; allocates only
    /// if `buf` must grow.
    pub fn write(&self, buf: &mut BytesMut, fields: &Fields, subscribers: &Subscribers, digits: usize) {
        let at = buf.len();
        buf.extend_from_slice(&self.bytes);
        let m = &mut buf[at..];
        m[12..16].copy_from_slice(&fields.hop_by_hop.to_be_bytes());
        m[16..20].copy_from_slice(&fields.end_to_end.to_be_bytes());
        put_digits(&mut m[self.session..self.session + SESSION_DIGITS], u64::from(fields.session));
        m[self.number..self.number + 4].copy_from_slice(&fields.number.to_be_bytes());
        m[self.timestamp..self.timestamp + 4].copy_from_slice(&fields.ntp_secs.to_be_bytes());
        put_digits(&mut m[self.msisdn..self.msisdn + digits], subscribers.msisdn(fields.subscriber));
        put_digits(&mut m[self.imsi..self.imsi + IMSI_INDEX_DIGITS], fields.subscriber);
        if let Some(c) = self.charging_id {
            m[c..c + 4].copy_from_slice(&fields.session.to_be_bytes());
        }
    }
}

/// Writes `v` in decimal, zero-padded to the slice's width (the top digits are cut if `v` has
/// more; callers size the field so it never does).
fn put_digits(out: &mut [u8], mut v: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Reads the digits `put_digits` wrote; `None` if any byte is not a digit.
pub fn read_digits(bytes: &[u8]) -> Option<u64> {
    bytes.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc.wrapping_mul(10).wrapping_add(u64::from(b - b'0')))
    })
}

/// Every request one connection sends, pre-encoded, and its Session-Id prefix.
#[derive(Clone, Debug)]
pub struct Templates {
    /// Indexed by [`Kind`] and then by [`Step`]; `None` where a kind has no such request.
    by_kind: [[Option<Template>; 4]; 3],
    /// The Session-Id up to the session number (RFC 6733 §8.8:
    /// `<DiameterIdentity>;<high 32 bits>;<low 32 bits>[;<optional value>]`).
    session_prefix: Vec<u8>,
    subscribers: Subscribers,
    digits: usize,
}

/// What the requests of a run look like beyond the scenario.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub rating_groups: u32,
    pub subscribers: Subscribers,
}

impl Templates {
    /// Encodes every request of `mix`'s kinds. `session_prefix` is the Session-Id up to the
    /// session number (it names the run and the connection, so Session-Ids never repeat).
    pub fn new(identity: &Identity, session_prefix: &str, shape: Shape, mix: Mix) -> Self {
        let digits = shape.subscribers.digits();
        let mut by_kind: [[Option<Template>; 4]; 3] = Default::default();
        for kind in Kind::ALL.into_iter().filter(|k| mix.includes(*k)) {
            let steps: &[Step] = match kind {
                Kind::Sms => &[Step::Event],
                Kind::Data | Kind::Voice => &[Step::Initial, Step::Update, Step::Terminate],
            };
            for &step in steps {
                let t = encode_template(identity, session_prefix, shape, digits, kind, step);
                by_kind[kind as usize][step.index()] = Some(t);
            }
        }
        Self {
            by_kind,
            session_prefix: session_prefix.as_bytes().to_vec(),
            subscribers: shape.subscribers,
            digits,
        }
    }

    /// The template of a request `kind` sends at `step`.
    ///
    /// # Panics
    /// If the kind has no such request or was not in the mix: sessions only take steps their
    /// kind has, so this is a bug.
    pub fn get(&self, kind: Kind, step: Step) -> &Template {
        match &self.by_kind[kind as usize][step.index()] {
            Some(t) => t,
            None => panic!("no {} template for {step:?}", kind.name()),
        }
    }

    pub fn write(&self, buf: &mut BytesMut, kind: Kind, step: Step, fields: &Fields) {
        self.get(kind, step).write(buf, fields, &self.subscribers, self.digits);
    }

    /// Whether `session_id` is the Session-Id of session number `session` (compared without
    /// building the string).
    pub fn is_session_id(&self, session_id: &[u8], session: u32) -> bool {
        let p = self.session_prefix.len();
        session_id.len() == p + SESSION_DIGITS
            && session_id[..p] == self.session_prefix[..]
            && read_digits(&session_id[p..]) == Some(u64::from(session))
    }

    /// The Session-Id of session number `session`, for messages and tests.
    pub fn session_id(&self, session: u32) -> String {
        let mut digits = [0u8; SESSION_DIGITS];
        put_digits(&mut digits, u64::from(session));
        let mut s = String::from_utf8_lossy(&self.session_prefix).into_owned();
        s.push_str(std::str::from_utf8(&digits).unwrap_or_default());
        s
    }
}

/// Encodes one request with placeholder values, then finds the offsets of the fields to patch
/// by walking what was encoded (so the offsets cannot disagree with the encoder).
fn encode_template(
    identity: &Identity,
    session_prefix: &str,
    shape: Shape,
    digits: usize,
    kind: Kind,
    step: Step,
) -> Template {
    let mut buf = BytesMut::with_capacity(1024);
    // RFC 4006 §3.1: "The CCR message ... MUST have the 'R' and 'P' bits set."
    let flags = CommandFlags(CommandFlags::REQUEST | CommandFlags::PROXIABLE);
    let app = ApplicationId::CREDIT_CONTROL;
    let mut e = Encoder::new(&mut buf, flags, CommandCode::CREDIT_CONTROL, app, 0, 0);
    // RFC 6733 §8.8: Session-Id first, right after the header.
    let session_id = format!("{session_prefix}{}", "0".repeat(SESSION_DIGITS));
    e.str(spec::SESSION_ID, &session_id);
    e.str(spec::ORIGIN_HOST, &identity.origin_host);
    e.str(spec::ORIGIN_REALM, &identity.origin_realm);
    e.str(spec::DESTINATION_REALM, &identity.destination_realm);
    e.u32(spec::AUTH_APPLICATION_ID, app.0);
    let context = match kind {
        Kind::Data => "32251@3gpp.org",
        Kind::Voice => "32260@3gpp.org",
        Kind::Sms => "32274@3gpp.org",
    };
    e.str(avp::SERVICE_CONTEXT_ID, context);
    e.u32(avp::CC_REQUEST_TYPE, step.wire());
    e.u32(avp::CC_REQUEST_NUMBER, 0);
    e.u32(spec::ORIGIN_STATE_ID, identity.origin_state_id);
    e.u32(avp::EVENT_TIMESTAMP, 0);
    // A PGW or CSCF names the subscriber both ways (TS 32.299 §7.2.170): MSISDN, then IMSI.
    let g = e.begin_group(avp::SUBSCRIPTION_ID);
    e.u32(avp::SUBSCRIPTION_ID_TYPE, 0);
    e.str(avp::SUBSCRIPTION_ID_DATA, &"0".repeat(digits));
    e.end_group(g);
    let g = e.begin_group(avp::SUBSCRIPTION_ID);
    e.u32(avp::SUBSCRIPTION_ID_TYPE, 1);
    e.str(avp::SUBSCRIPTION_ID_DATA, &format!("{IMSI_PREFIX}{}", "0".repeat(IMSI_INDEX_DIGITS)));
    e.end_group(g);
    if step == Step::Terminate {
        e.u32(avp::TERMINATION_CAUSE, TERMINATION_CAUSE_LOGOUT);
    }
    match kind {
        Kind::Sms => {
            // The single-service form an SMSC uses for a one-time event (RFC 4006 §6.3).
            let g = e.begin_group(avp::REQUESTED_SERVICE_UNIT);
            e.u64(avp::CC_SERVICE_SPECIFIC_UNITS, 1);
            e.end_group(g);
            e.u32(avp::REQUESTED_ACTION, REQUESTED_ACTION_DIRECT_DEBITING);
        }
        Kind::Data | Kind::Voice => {
            // RFC 4006 §8.40: MULTIPLE_SERVICES_SUPPORTED, since the units go in MSCCs.
            e.u32(avp::MULTIPLE_SERVICES_INDICATOR, 1);
            let groups = if kind == Kind::Data { shape.rating_groups } else { 1 };
            for i in 0..groups {
                write_mscc(&mut e, kind, step, i);
            }
        }
    }
    write_service_information(&mut e, kind);
    e.finish();
    locate(buf.to_vec(), session_prefix.len())
}

fn write_mscc(e: &mut Encoder<'_>, kind: Kind, step: Step, i: u32) {
    let g = e.begin_group(avp::MULTIPLE_SERVICES_CREDIT_CONTROL);
    if step != Step::Terminate {
        // An empty RSU: "grant what you decide" (TS 32.299 §6.3.2), what PGWs send.
        let r = e.begin_group(avp::REQUESTED_SERVICE_UNIT);
        e.end_group(r);
    }
    if step != Step::Initial {
        let u = e.begin_group(avp::USED_SERVICE_UNIT);
        match kind {
            Kind::Voice => {
                e.u32(avp::CC_TIME, VOICE_SECONDS_PER_UPDATE);
            }
            Kind::Data | Kind::Sms => {
                e.u64(avp::CC_TOTAL_OCTETS, DATA_OCTETS_PER_UPDATE);
                e.u64(avp::CC_INPUT_OCTETS, DATA_INPUT_OCTETS_PER_UPDATE);
                e.u64(avp::CC_OUTPUT_OCTETS, DATA_OUTPUT_OCTETS_PER_UPDATE);
            }
        }
        let reason =
            if step == Step::Terminate { REPORTING_REASON_FINAL } else { REPORTING_REASON_QUOTA_EXHAUSTED };
        e.u32(avp::REPORTING_REASON, reason);
        e.end_group(u);
    }
    let rg = match kind {
        Kind::Voice => VOICE_RATING_GROUP,
        Kind::Data | Kind::Sms => DATA_RATING_GROUP_FIRST + i,
    };
    e.u32(avp::RATING_GROUP, rg);
    e.end_group(g);
}

/// TS 32.299 §7.2.200 Service-Information, small but of the shape real nodes send: the PGW's
/// PS-Information (§7.2.158: charging id, home network, APN, location, radio type; the same
/// members as the python-diameter CCR-U vector, so a data CCR-U is ≈ 550 bytes), the CSCF's
/// IMS-Information (§7.2.77), the SMSC's SMS-Information (§7.2.217).
fn write_service_information(e: &mut Encoder<'_>, kind: Kind) {
    let si = e.begin_group(tgpp::SERVICE_INFORMATION);
    match kind {
        Kind::Data => {
            let ps = e.begin_group(tgpp::PS_INFORMATION);
            e.u32(tgpp::CHARGING_ID, 0);
            e.str(tgpp::IMSI_MCC_MNC, "26201");
            e.str(tgpp::CALLED_STATION_ID, "internet");
            // TS 29.061 §16.4.7.2: TAI and ECGI (type 130), MCC 262 MNC 01.
            e.bytes(
                tgpp::USER_LOCATION_INFO,
                &[0x82, 0x62, 0xf2, 0x10, 0x00, 0x01, 0x62, 0xf2, 0x10, 0x00, 0x00, 0xa0, 0x01],
            );
            e.bytes(tgpp::RAT_TYPE, &[6]); // EUTRAN
            e.end_group(ps);
        }
        Kind::Voice => {
            let ims = e.begin_group(tgpp::IMS_INFORMATION);
            e.u32(tgpp::ROLE_OF_NODE, 0); // ORIGINATING_ROLE
            e.u32(tgpp::NODE_FUNCTIONALITY, 6); // AS
            e.str(tgpp::CALLED_PARTY_ADDRESS, "tel:+493012345678");
            e.end_group(ims);
        }
        Kind::Sms => {
            let sms = e.begin_group(tgpp::SMS_INFORMATION);
            e.ip(tgpp::SMSC_ADDRESS, [192, 0, 2, 30].into());
            e.i32(tgpp::DATA_CODING_SCHEME, 0);
            e.u32(tgpp::SM_MESSAGE_TYPE, 0); // SUBMISSION
            e.end_group(sms);
        }
    }
    e.end_group(si);
}

/// Finds the offsets of the patched fields in an encoded template.
fn locate(bytes: Vec<u8>, session_prefix_len: usize) -> Template {
    let offset = |data: &[u8]| data.as_ptr() as usize - bytes.as_ptr() as usize;
    let msg = MessageRef::parse(&bytes).expect("the encoder writes whole messages");
    let (mut session, mut number, mut timestamp, mut msisdn, mut imsi, mut charging_id) =
        (None, None, None, None, None, None);
    for a in msg.avps().map_while(Result::ok) {
        match (a.vendor, a.code.0) {
            (VendorId::IETF, 263) => session = Some(offset(a.data) + session_prefix_len),
            (VendorId::IETF, 415) => number = Some(offset(a.data)),
            (VendorId::IETF, 55) => timestamp = Some(offset(a.data)),
            (VendorId::IETF, 443) => {
                let kind = member(&a, avp::SUBSCRIPTION_ID_TYPE).map(|t| t.data);
                let data = member(&a, avp::SUBSCRIPTION_ID_DATA).map(|d| offset(d.data));
                match kind {
                    Some([0, 0, 0, 0]) => msisdn = data,
                    Some([0, 0, 0, 1]) => imsi = data.map(|d| d + IMSI_PREFIX.len()),
                    _ => {}
                }
            }
            (VendorId::TGPP, 873) => {
                charging_id = member(&a, tgpp::PS_INFORMATION)
                    .and_then(|ps| member(&ps, tgpp::CHARGING_ID))
                    .map(|c| offset(c.data));
            }
            _ => {}
        }
    }
    let found = |o: Option<usize>, what: &str| o.unwrap_or_else(|| panic!("template without {what}"));
    Template {
        session: found(session, "Session-Id"),
        number: found(number, "CC-Request-Number"),
        timestamp: found(timestamp, "Event-Timestamp"),
        msisdn: found(msisdn, "an E.164 Subscription-Id"),
        imsi: found(imsi, "an IMSI Subscription-Id"),
        charging_id,
        bytes,
    }
}

fn member<'a>(group: &AvpRef<'a>, spec: AvpSpec) -> Option<AvpRef<'a>> {
    AvpIter::new(group.data).map_while(Result::ok).find(|m| m.code == spec.code && m.vendor == spec.vendor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diameter::{tree, validate_request, AvpCode, Dictionary};

    fn identity() -> Identity {
        Identity {
            origin_host: "load.localdomain".into(),
            origin_realm: "localdomain".into(),
            destination_realm: "localdomain".into(),
            origin_state_id: 7,
        }
    }

    const PREFIX: &str = "load.localdomain;1718000000;3735928559;3.";

    fn templates(rating_groups: u32) -> Templates {
        let shape =
            Shape { rating_groups, subscribers: Subscribers { first: 491_700_000_000, count: 10_000 } };
        Templates::new(&identity(), PREFIX, shape, Mix { weights: [1, 1, 1] })
    }

    fn fields() -> Fields {
        Fields {
            hop_by_hop: 0x0102_0304,
            end_to_end: 0x0506_0708,
            session: 42,
            number: 3,
            subscriber: 1234,
            ntp_secs: 3_913_056_000,
        }
    }

    fn written(t: &Templates, kind: Kind, step: Step) -> Vec<u8> {
        let mut buf = BytesMut::new();
        t.write(&mut buf, kind, step, &fields());
        buf.to_vec()
    }

    #[test]
    fn every_template_is_a_valid_request_with_its_fields_patched() {
        let dict = Dictionary::embedded().unwrap();
        let t = templates(1);
        let cases = [
            (Kind::Data, Step::Initial),
            (Kind::Data, Step::Update),
            (Kind::Data, Step::Terminate),
            (Kind::Voice, Step::Initial),
            (Kind::Voice, Step::Update),
            (Kind::Voice, Step::Terminate),
            (Kind::Sms, Step::Event),
        ];
        for (kind, step) in cases {
            let bytes = written(&t, kind, step);
            let msg = MessageRef::parse(&bytes).unwrap();
            if let Err(e) = validate_request(&dict, &msg, &[ApplicationId::CREDIT_CONTROL]) {
                panic!("{kind:?} {step:?}: {e:?}\n{}", tree::dump(&dict, &msg));
            }
            assert_eq!((msg.header.hop_by_hop, msg.header.end_to_end), (0x0102_0304, 0x0506_0708));
            assert_eq!(msg.str(AvpCode::SESSION_ID), Some(&*t.session_id(42)));
            assert!(t.is_session_id(msg.find(AvpCode::SESSION_ID).unwrap().data, 42));
            assert!(!t.is_session_id(msg.find(AvpCode::SESSION_ID).unwrap().data, 43));
            assert_eq!(msg.u32(AvpCode(415)), Some(3));
            assert_eq!(msg.u32(AvpCode(416)), Some(step.wire()));
            assert_eq!(msg.u32(AvpCode(55)), Some(3_913_056_000));
            let ids: Vec<_> = msg
                .find_all(AvpCode(443))
                .map(|s| member(&s, avp::SUBSCRIPTION_ID_DATA).unwrap().data.to_vec())
                .collect();
            assert_eq!(ids, [b"491700001234".to_vec(), b"262010000001234".to_vec()]);
        }
    }

    #[test]
    fn data_update_looks_like_a_pgw_s_and_is_about_500_bytes() {
        let dict = Dictionary::embedded().unwrap();
        let bytes = written(&templates(1), Kind::Data, Step::Update);
        let msg = MessageRef::parse(&bytes).unwrap();
        expect_test::expect![[r#"
            Credit-Control-Request code=272 app=4 flags=RP-- hbh=0x01020304 e2e=0x05060708 len=544
              Session-Id(263) -M- = "load.localdomain;1718000000;3735928559;3.0000000042"
              Origin-Host(264) -M- = "load.localdomain"
              Origin-Realm(296) -M- = "localdomain"
              Destination-Realm(283) -M- = "localdomain"
              Auth-Application-Id(258) -M- = 4
              Service-Context-Id(461) -M- = "32251@3gpp.org"
              CC-Request-Type(416) -M- = 2 UPDATE_REQUEST
              CC-Request-Number(415) -M- = 3
              Origin-State-Id(278) -M- = 7
              Event-Timestamp(55) -M- = ntp:3913056000
              Subscription-Id(443) -M-
                Subscription-Id-Type(450) -M- = 0 END_USER_E164
                Subscription-Id-Data(444) -M- = "491700001234"
              Subscription-Id(443) -M-
                Subscription-Id-Type(450) -M- = 1 END_USER_IMSI
                Subscription-Id-Data(444) -M- = "262010000001234"
              Multiple-Services-Indicator(455) -M- = 1 MULTIPLE_SERVICES_SUPPORTED
              Multiple-Services-Credit-Control(456) -M-
                Requested-Service-Unit(437) -M-
                Used-Service-Unit(446) -M-
                  CC-Total-Octets(421) -M- = 1048576
                  CC-Input-Octets(412) -M- = 262144
                  CC-Output-Octets(414) -M- = 786432
                  Reporting-Reason(872 v=10415) VM- = 3 QUOTA_EXHAUSTED
                Rating-Group(432) -M- = 10
              Service-Information(873 v=10415) VM-
                PS-Information(874 v=10415) VM-
                  3GPP-Charging-Id(2 v=10415) VM- = 42
                  3GPP-IMSI-MCC-MNC(8 v=10415) VM- = "26201"
                  Called-Station-Id(30) -M- = "internet"
                  3GPP-User-Location-Info(22 v=10415) VM- = 0x8262f210000162f2100000a001
                  3GPP-RAT-Type(21 v=10415) VM- = 0x06
        "#]]
        .assert_eq(&tree::dump(&dict, &msg));
    }

    #[test]
    fn rating_groups_each_get_an_mscc() {
        let bytes = written(&templates(3), Kind::Data, Step::Initial);
        let msg = MessageRef::parse(&bytes).unwrap();
        let rgs: Vec<u32> = msg
            .find_all(AvpCode(456))
            .map(|m| u32::from_be_bytes(member(&m, avp::RATING_GROUP).unwrap().data.try_into().unwrap()))
            .collect();
        assert_eq!(rgs, [10, 11, 12]);
    }

    #[test]
    fn mix_and_skew_parse_or_say_what_is_wrong() {
        assert_eq!("data=8,voice=1,sms=1".parse::<Mix>(), Ok(Mix { weights: [8, 1, 1] }));
        assert_eq!("voice=2".parse::<Mix>(), Ok(Mix { weights: [0, 2, 0] }));
        let err = |s: &str| s.parse::<Mix>().unwrap_err().to_string();
        assert_eq!(err("data=x"), "weight \"x\" of data is not a whole number");
        assert_eq!(err("video=1"), "unknown kind \"video\" (expected data, voice or sms)");
        assert_eq!(err("data"), "\"data\" is not KIND=WEIGHT (e.g. data=8,voice=1,sms=1)");
        assert_eq!(err("data=0"), "every weight is 0; at least one kind needs a weight");
        assert_eq!(err("data=1,data=2"), "data is given twice");
        assert_eq!("uniform".parse::<Skew>(), Ok(Skew::Uniform));
        assert_eq!("zipf:1.1".parse::<Skew>(), Ok(Skew::Zipf(1.1)));
        for bad in ["zipf:x", "zipf:0", "zipf:-1", "zipf:NaN", "zipf:inf", "zipf", "normal"] {
            assert!(bad.parse::<Skew>().is_err(), "{bad}");
        }
    }

    #[test]
    fn digits_round_trip() {
        let mut d = [0u8; 10];
        put_digits(&mut d, 4_294_967_295);
        assert_eq!(&d, b"4294967295");
        put_digits(&mut d, 42);
        assert_eq!(&d, b"0000000042");
        assert_eq!(read_digits(&d), Some(42));
        assert_eq!(read_digits(b"12a"), None);
        assert_eq!(decimal_digits(0), 1);
        assert_eq!(decimal_digits(491_700_000_000), 12);
        assert_eq!(decimal_digits(999), 3);
        assert_eq!(decimal_digits(1000), 4);
    }

    /// Frequencies of the first ranks against 1/k^s / H(n, s), for a fixed seed: a check of
    /// the sampler's arithmetic, not of randomness.
    #[test]
    fn zipf_follows_its_law() {
        for s in [0.5, 1.0, 1.2, 2.0] {
            let n = 1000u64;
            let z = Zipf::new(n, s);
            let mut rng = Rng::new(12345);
            let samples = 200_000;
            let mut counts = vec![0u64; n as usize + 1];
            for _ in 0..samples {
                let k = z.sample(&mut rng);
                assert!((1..=n).contains(&k));
                counts[k as usize] += 1;
            }
            let h: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
            for k in [1u64, 2, 10] {
                let expected = (k as f64).powf(-s) / h;
                let got = counts[k as usize] as f64 / samples as f64;
                assert!((got - expected).abs() < 0.1 * expected + 0.002, "s={s} k={k}: {got} vs {expected}");
            }
        }
    }

    #[test]
    fn chooser_spreads_kinds_by_weight_and_subscribers_over_the_range() {
        let c = Chooser::new(Mix { weights: [8, 1, 1] }, 100, Skew::Uniform);
        let mut rng = Rng::new(1);
        let mut kinds = [0u32; 3];
        let mut seen = [false; 100];
        for _ in 0..10_000 {
            kinds[c.kind(&mut rng) as usize] += 1;
            seen[c.subscriber(&mut rng) as usize] = true;
        }
        assert!((7_500..8_500).contains(&kinds[0]), "{kinds:?}");
        assert!((700..1_300).contains(&kinds[1]) && (700..1_300).contains(&kinds[2]), "{kinds:?}");
        assert!(seen.iter().all(|&s| s));
        let z = Chooser::new(Mix::for_scenario(Scenario::Data, Mix::default()), 10, Skew::Zipf(1.0));
        assert!((0..1000).all(|_| z.kind(&mut rng) == Kind::Data && z.subscriber(&mut rng) < 10));
    }
}
