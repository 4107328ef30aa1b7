//! Runtime dictionaries: AVP definitions, enumerations and command rules loaded from XML files.
//!
//! The defaults in `dictionaries/` are embedded in the binary; an operator adds vendor AVPs by
//! pointing `dictionary_dir` at a directory of more files, without recompiling. The format is
//! an XML dialect close to go-diameter's (documented in `dictionaries/README.md`).
//!
//! Loading is two-phase: every file is parsed into raw definitions first, then names in `rule`
//! elements are resolved, so a file may reference AVPs defined in any other file of the set.

use std::collections::HashMap;
use std::path::Path;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::avp::AvpFlags;
use super::codes::{ApplicationId, AvpCode, CommandCode, VendorId};
use super::types::AvpType;
use crate::limits::{DICTIONARY_AVPS_MAX, DICTIONARY_FILES_MAX};

/// Most member rules one command or Grouped AVP may list; occurrence counters for validation
/// live on the stack in an array of this size.
pub const RULES_PER_GROUP_MAX: usize = 128;

/// The dictionaries shipped with gyro, in load order.
pub const EMBEDDED: [(&str, &str); 3] = [
    ("base.xml", include_str!("../../dictionaries/base.xml")),
    ("credit_control.xml", include_str!("../../dictionaries/credit_control.xml")),
    ("tgpp_ro.xml", include_str!("../../dictionaries/tgpp_ro.xml")),
];

/// Index of an AVP definition inside a [`Dictionary`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AvpIndex(u32);

/// How often a member may occur: `min..=max` (RFC 6733 §3.2 ABNF qualifiers).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Rule {
    pub avp: AvpIndex,
    pub min: u16,
    /// `u16::MAX` stands for unbounded; 0 means "must not occur".
    pub max: u16,
}

/// The member rules of a command or Grouped AVP, with an index sorted by AVP so validation
/// finds an AVP's rule by binary search instead of scanning up to `RULES_PER_GROUP_MAX` rules.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Position + 1 of each AVP's rule, indexed by AVP index (0: no rule). One byte per AVP of
    /// the dictionary: validation finds a member's rule with one load instead of a search.
    slots: Vec<u8>,
    /// Positions of the rules with `min > 0`, the only ones checked after the walk.
    required: Vec<u8>,
}

impl RuleSet {
    pub const EMPTY: Self = Self { rules: Vec::new(), slots: Vec::new(), required: Vec::new() };

    fn new(rules: Vec<Rule>, avp_count: usize) -> Self {
        assert!(rules.len() < RULES_PER_GROUP_MAX.min(255), "checked when the dictionary is resolved");
        let mut slots = vec![0u8; if rules.is_empty() { 0 } else { avp_count }];
        for (i, r) in rules.iter().enumerate() {
            slots[r.avp.0 as usize] = i as u8 + 1;
        }
        let required = (0..rules.len()).filter(|&i| rules[i].min > 0).map(|i| i as u8).collect();
        Self { rules, slots, required }
    }

    fn push(&mut self, rule: Rule, avp_count: usize) {
        let mut rules = std::mem::take(&mut self.rules);
        rules.push(rule);
        *self = Self::new(rules, avp_count);
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Positions of the rules that require at least one occurrence.
    pub fn required(&self) -> impl Iterator<Item = usize> + '_ {
        self.required.iter().map(|&i| usize::from(i))
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The position of the rule for `avp`, if the group has one.
    #[inline]
    pub fn slot(&self, avp: AvpIndex) -> Option<usize> {
        match self.slots.get(avp.0 as usize) {
            Some(&s) if s > 0 => Some(usize::from(s - 1)),
            _ => None,
        }
    }
}

/// Validation facts of one AVP (see [`Dictionary::hot`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HotAvp {
    pub ty: AvpType,
    /// The definition forbids the M bit.
    pub must_not_mandatory: bool,
    /// The definition lists enumeration values.
    pub has_enums: bool,
}

#[derive(Clone, Debug)]
pub struct AvpDef {
    pub name: String,
    pub code: AvpCode,
    pub vendor: VendorId,
    pub ty: AvpType,
    pub must: AvpFlags,
    pub must_not: AvpFlags,
    /// Sorted by value.
    pub enums: Vec<(i32, String)>,
    /// Members of a Grouped AVP.
    pub rules: RuleSet,
    pub source: Location,
}

impl AvpDef {
    pub fn enum_name(&self, v: i32) -> Option<&str> {
        self.enums.binary_search_by_key(&v, |(k, _)| *k).ok().map(|i| self.enums[i].1.as_str())
    }
}

#[derive(Clone, Debug)]
pub struct CommandDef {
    pub name: String,
    pub short: String,
    pub code: CommandCode,
    pub application: ApplicationId,
    pub request: RuleSet,
    pub answer: RuleSet,
}

#[derive(Clone, Debug)]
pub struct ApplicationDef {
    pub id: ApplicationId,
    pub name: String,
}

/// Where a definition came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A dictionary file that cannot be used, with the file, the line and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {problem}")]
pub struct DictError {
    pub file: String,
    pub line: usize,
    pub problem: String,
}

const NONE: u32 = u32::MAX;
const DIRECT_CODES: usize = 4096;

/// A loaded, resolved dictionary set.
#[derive(Debug)]
pub struct Dictionary {
    avps: Vec<AvpDef>,
    hot: Vec<HotAvp>,
    /// Direct index for vendor-0 and 3GPP codes below 4096: the hot path of validation looks
    /// up every AVP, and an array read is several times cheaper than hashing.
    direct_ietf: Vec<u32>,
    direct_tgpp: Vec<u32>,
    by_code: HashMap<(u32, u32), u32>,
    by_name: HashMap<String, u32>,
    commands: Vec<CommandDef>,
    /// (application, command code) → position in `commands`, sorted by key. A dictionary has
    /// a few dozen commands, and a binary search over them costs a fraction of hashing the key
    /// with SipHash, which every request's validation did.
    command_index: Vec<((u32, u32), usize)>,
    applications: Vec<ApplicationDef>,
    vendors: Vec<(VendorId, String)>,
    files: Vec<String>,
}

impl Dictionary {
    /// The embedded default dictionaries.
    pub fn embedded() -> Result<Self, DictError> {
        Self::from_sources(EMBEDDED.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())))
    }

    /// The embedded dictionaries plus every `*.xml` file of `dir`, in name order.
    pub fn embedded_and_dir(dir: &Path) -> Result<Self, DictError> {
        let mut sources: Vec<(String, String)> =
            EMBEDDED.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())).collect();
        sources.extend(read_dir(dir)?);
        Self::from_sources(sources)
    }

    /// Builds a dictionary from (file name, XML text) pairs, in order.
    pub fn from_sources(sources: impl IntoIterator<Item = (String, String)>) -> Result<Self, DictError> {
        let mut raw = RawSet::default();
        for (file, text) in sources {
            parse_file(&file, &text, &mut raw)?;
        }
        raw.resolve()
    }

    pub fn avp(&self, i: AvpIndex) -> &AvpDef {
        &self.avps[i.0 as usize]
    }

    /// Looks an AVP up by its wire identity.
    #[inline]
    pub fn lookup(&self, code: AvpCode, vendor: VendorId) -> Option<AvpIndex> {
        let c = code.0 as usize;
        let i = if c < DIRECT_CODES && vendor == VendorId::IETF {
            self.direct_ietf[c]
        } else if c < DIRECT_CODES && vendor == VendorId::TGPP {
            self.direct_tgpp[c]
        } else {
            return self.lookup_hashed(code, vendor);
        };
        (i != NONE).then_some(AvpIndex(i))
    }

    #[cold]
    fn lookup_hashed(&self, code: AvpCode, vendor: VendorId) -> Option<AvpIndex> {
        self.by_code.get(&(code.0, vendor.0)).map(|&i| AvpIndex(i))
    }

    /// The few facts validation needs about an AVP, packed together so the walk over a
    /// message touches one small array instead of the full definitions.
    #[inline]
    pub fn hot(&self, i: AvpIndex) -> HotAvp {
        self.hot[i.0 as usize]
    }

    pub fn by_name(&self, name: &str) -> Option<AvpIndex> {
        self.by_name.get(name).map(|&i| AvpIndex(i))
    }

    /// The definition of a command as used with `application`; commands defined for
    /// application 0 (RAR, ASR, STR) serve every application that does not redefine them.
    pub fn command(&self, application: ApplicationId, code: CommandCode) -> Option<&CommandDef> {
        let i = self.command_at((application.0, code.0)).or_else(|| self.command_at((0, code.0)))?;
        Some(&self.commands[i])
    }

    fn command_at(&self, key: (u32, u32)) -> Option<usize> {
        let at = self.command_index.binary_search_by_key(&key, |&(k, _)| k).ok()?;
        Some(self.command_index[at].1)
    }

    /// Whether any application defines this command code.
    pub fn command_known(&self, code: CommandCode) -> bool {
        self.commands.iter().any(|c| c.code == code)
    }

    pub fn avps(&self) -> &[AvpDef] {
        &self.avps
    }
    pub fn commands(&self) -> &[CommandDef] {
        &self.commands
    }
    pub fn applications(&self) -> &[ApplicationDef] {
        &self.applications
    }
    pub fn vendors(&self) -> &[(VendorId, String)] {
        &self.vendors
    }
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// A short human summary, for `gyro dict check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "files: {}", self.files.join(", "));
        let mut per_vendor: Vec<(u32, usize)> = Vec::new();
        for a in &self.avps {
            match per_vendor.iter_mut().find(|(v, _)| *v == a.vendor.0) {
                Some((_, n)) => *n += 1,
                None => per_vendor.push((a.vendor.0, 1)),
            }
        }
        per_vendor.sort_unstable();
        let enums: usize = self.avps.iter().map(|a| a.enums.len()).sum();
        let _ = writeln!(s, "avps: {} ({} enumeration values)", self.avps.len(), enums);
        for (v, n) in per_vendor {
            let name = self
                .vendors
                .iter()
                .find(|(id, _)| id.0 == v)
                .map_or(if v == 0 { "IETF" } else { "?" }, |(_, n)| n.as_str());
            let _ = writeln!(s, "  vendor {v} ({name}): {n} avps");
        }
        let _ = writeln!(s, "applications: {}", self.applications.len());
        for app in &self.applications {
            let _ = writeln!(s, "  {} {}", app.id.0, app.name);
        }
        let _ = writeln!(s, "commands: {}", self.commands.len());
        for c in &self.commands {
            let _ = writeln!(
                s,
                "  {} {} ({}R/{}A) app {}: {} request rules, {} answer rules",
                c.code.0,
                c.name,
                c.short,
                c.short,
                c.application.0,
                c.request.len(),
                c.answer.len()
            );
        }
        s
    }
}

fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, DictError> {
    let err = |problem: String| DictError { file: dir.display().to_string(), line: 0, problem };
    let entries = std::fs::read_dir(dir).map_err(|e| err(format!("cannot read directory: {e}")))?;
    let mut paths = Vec::new();
    for e in entries {
        let p = e.map_err(|e| err(format!("cannot read directory: {e}")))?.path();
        if p.extension().is_some_and(|x| x == "xml") {
            paths.push(p);
        }
    }
    paths.sort();
    if paths.len() > DICTIONARY_FILES_MAX {
        return Err(err(format!("more than {DICTIONARY_FILES_MAX} dictionary files")));
    }
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let text = std::fs::read_to_string(&p).map_err(|e| DictError {
            file: p.display().to_string(),
            line: 0,
            problem: format!("cannot read file: {e}"),
        })?;
        out.push((p.display().to_string(), text));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Parsing into raw definitions.

#[derive(Debug)]
struct RawRule {
    name: String,
    min: u16,
    max: u16,
    at: Location,
}

#[derive(Debug)]
struct RawAvp {
    name: String,
    code: u32,
    vendor: u32,
    ty: AvpType,
    must: AvpFlags,
    must_not: AvpFlags,
    enums: Vec<(i32, String)>,
    rules: Vec<RawRule>,
    replace: bool,
    at: Location,
}

#[derive(Debug)]
struct RawCommand {
    name: String,
    short: String,
    code: u32,
    application: u32,
    request: Vec<RawRule>,
    answer: Vec<RawRule>,
    at: Location,
}

#[derive(Debug)]
struct RawExtend {
    avp: String,
    rules: Vec<RawRule>,
    at: Location,
}

#[derive(Default, Debug)]
struct RawSet {
    files: Vec<String>,
    vendors: Vec<(u32, String)>,
    applications: Vec<(u32, String)>,
    avps: Vec<RawAvp>,
    commands: Vec<RawCommand>,
    extends: Vec<RawExtend>,
}

enum Target {
    None,
    Request,
    Answer,
    Avp,
    Extend,
}

struct Parser<'t> {
    file: &'t str,
    text: &'t str,
    /// Line counting resumes from the last position asked for, so it is linear in the file
    /// (positions only move forward while parsing; an earlier one restarts the count).
    cursor: std::cell::Cell<(usize, usize)>,
}

impl Parser<'_> {
    /// The line of the first non-blank character at or after `pos` (the reader's position is
    /// the end of the previous event; the element starts after the blanks that follow it).
    fn line_at(&self, pos: usize) -> usize {
        let pos = pos.min(self.text.len());
        let blanks = self.text.as_bytes()[pos..].iter().take_while(|b| b.is_ascii_whitespace()).count();
        let pos = pos + blanks;
        let (mut from, mut line) = self.cursor.get();
        if pos < from {
            (from, line) = (0, 1);
        }
        line += self.text.as_bytes()[from..pos].iter().filter(|&&b| b == b'\n').count();
        self.cursor.set((pos, line));
        line
    }

    fn err(&self, pos: usize, problem: impl Into<String>) -> DictError {
        DictError { file: self.file.to_owned(), line: self.line_at(pos), problem: problem.into() }
    }

    fn attrs(&self, e: &BytesStart<'_>, pos: usize) -> Result<Vec<(String, String)>, DictError> {
        let mut out = Vec::new();
        for a in e.attributes() {
            let a = a.map_err(|x| self.err(pos, format!("bad attribute: {x}")))?;
            let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
            let value = a
                .unescape_value()
                .map_err(|x| self.err(pos, format!("bad value of attribute {key}: {x}")))?
                .into_owned();
            out.push((key, value));
        }
        Ok(out)
    }
}

fn take<'a>(attrs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn check_known(
    p: &Parser<'_>,
    pos: usize,
    el: &str,
    attrs: &[(String, String)],
    known: &[&str],
) -> Result<(), DictError> {
    for (k, _) in attrs {
        if !known.contains(&k.as_str()) {
            return Err(p.err(
                pos,
                format!("<{el}> has unknown attribute `{k}` (expected one of: {})", known.join(", ")),
            ));
        }
    }
    Ok(())
}

fn required<'a>(
    p: &Parser<'_>,
    pos: usize,
    el: &str,
    attrs: &'a [(String, String)],
    key: &str,
) -> Result<&'a str, DictError> {
    take(attrs, key).ok_or_else(|| p.err(pos, format!("<{el}> needs attribute `{key}`")))
}

fn number<T: std::str::FromStr>(p: &Parser<'_>, pos: usize, key: &str, v: &str) -> Result<T, DictError> {
    v.trim().parse().map_err(|_| p.err(pos, format!("attribute `{key}`: `{v}` is not a valid number")))
}

fn flags(p: &Parser<'_>, pos: usize, key: &str, v: Option<&str>) -> Result<AvpFlags, DictError> {
    let mut f = 0u8;
    for letter in v.unwrap_or("").split([' ', ',']).filter(|s| !s.is_empty()) {
        f |= match letter {
            "V" => AvpFlags::VENDOR,
            "M" => AvpFlags::MANDATORY,
            "P" => AvpFlags::PROTECTED,
            other => {
                return Err(p.err(pos, format!("attribute `{key}`: unknown flag `{other}` (use V, M, P)")))
            }
        };
    }
    Ok(AvpFlags(f))
}

fn parse_rule(p: &Parser<'_>, pos: usize, attrs: &[(String, String)]) -> Result<RawRule, DictError> {
    check_known(p, pos, "rule", attrs, &["avp", "min", "max", "required"])?;
    let name = required(p, pos, "rule", attrs, "avp")?.to_owned();
    let mut min: u16 = match take(attrs, "min") {
        Some(v) => number(p, pos, "min", v)?,
        None => 0,
    };
    // go-diameter spelling, accepted for familiarity.
    if take(attrs, "required") == Some("true") {
        min = min.max(1);
    }
    let max: u16 = match take(attrs, "max") {
        Some("*") | None => u16::MAX,
        Some(v) => number(p, pos, "max", v)?,
    };
    if max != 0 && min > max {
        return Err(p.err(pos, format!("rule for {name}: min {min} is above max {max}")));
    }
    Ok(RawRule { name, min, max, at: Location { file: p.file.to_owned(), line: p.line_at(pos) } })
}

fn parse_avp(p: &Parser<'_>, pos: usize, attrs: &[(String, String)]) -> Result<RawAvp, DictError> {
    check_known(
        p,
        pos,
        "avp",
        attrs,
        &["name", "code", "vendor", "type", "must", "may", "must-not", "replace"],
    )?;
    let name = required(p, pos, "avp", attrs, "name")?.to_owned();
    let code: u32 = number(p, pos, "code", required(p, pos, "avp", attrs, "code")?)?;
    let vendor: u32 = match take(attrs, "vendor") {
        Some(v) => number(p, pos, "vendor", v)?,
        None => 0,
    };
    let ty_name = required(p, pos, "avp", attrs, "type")?;
    let ty = AvpType::from_name(ty_name).ok_or_else(|| {
        let all: Vec<_> = AvpType::ALL.iter().map(|t| t.name()).collect();
        p.err(pos, format!("avp {name}: unknown type `{ty_name}` (expected one of: {})", all.join(", ")))
    })?;
    let must = flags(p, pos, "must", take(attrs, "must"))?;
    flags(p, pos, "may", take(attrs, "may"))?;
    let must_not = flags(p, pos, "must-not", take(attrs, "must-not"))?;
    if (vendor != 0) != must.is_vendor() {
        return Err(
            p.err(pos, format!("avp {name}: a vendor id other than 0 goes with V in `must`, and only then"))
        );
    }
    if must.0 & must_not.0 != 0 {
        return Err(p.err(pos, format!("avp {name}: a flag is in both `must` and `must-not`")));
    }
    Ok(RawAvp {
        name,
        code,
        vendor,
        ty,
        must,
        must_not,
        enums: Vec::new(),
        rules: Vec::new(),
        replace: take(attrs, "replace") == Some("true"),
        at: Location { file: p.file.to_owned(), line: p.line_at(pos) },
    })
}

fn parse_file(file: &str, text: &str, raw: &mut RawSet) -> Result<(), DictError> {
    let p = Parser { file, text, cursor: std::cell::Cell::new((0, 1)) };
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<String> = Vec::new();
    let mut app: Option<u32> = None;
    let mut target = Target::None;
    let mut saw_root = false;
    loop {
        let pos = reader.buffer_position() as usize;
        let ev = reader
            .read_event()
            .map_err(|e| p.err(reader.error_position() as usize, format!("XML error: {e}")))?;
        let (e, empty) = match ev {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                let el = stack.pop().unwrap_or_default();
                match el.as_str() {
                    "application" => app = None,
                    "request" | "answer" | "avp" | "extend" => target = Target::None,
                    _ => {}
                }
                continue;
            }
            Event::Eof => break,
            Event::Text(t) => {
                let t = t.unescape().map_err(|e| p.err(pos, format!("XML error: {e}")))?;
                if !t.trim().is_empty() {
                    return Err(p.err(pos, format!("unexpected text `{}`", t.trim())));
                }
                continue;
            }
            _ => continue,
        };
        let el = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        let attrs = p.attrs(&e, pos)?;
        let parent = stack.last().map(String::as_str);
        match (parent, el.as_str()) {
            (None, "dictionary") => saw_root = true,
            (Some("dictionary"), "vendor") => {
                check_known(&p, pos, "vendor", &attrs, &["id", "name"])?;
                let id = number(&p, pos, "id", required(&p, pos, "vendor", &attrs, "id")?)?;
                raw.vendors.push((id, required(&p, pos, "vendor", &attrs, "name")?.to_owned()));
            }
            (Some("dictionary"), "application") => {
                check_known(&p, pos, "application", &attrs, &["id", "name", "type", "uri"])?;
                let id = number(&p, pos, "id", required(&p, pos, "application", &attrs, "id")?)?;
                let name = required(&p, pos, "application", &attrs, "name")?.to_owned();
                if !raw.applications.iter().any(|(i, _)| *i == id) {
                    raw.applications.push((id, name));
                }
                app = Some(id);
            }
            (Some("application"), "command") => {
                check_known(&p, pos, "command", &attrs, &["code", "name", "short"])?;
                let code: u32 = number(&p, pos, "code", required(&p, pos, "command", &attrs, "code")?)?;
                if code >= 1 << 24 {
                    return Err(p.err(pos, format!("command code {code} does not fit 24 bits")));
                }
                let name = required(&p, pos, "command", &attrs, "name")?.to_owned();
                let short = take(&attrs, "short").unwrap_or(&name).to_owned();
                let application = app.unwrap_or(0);
                raw.commands.push(RawCommand {
                    name,
                    short,
                    code,
                    application,
                    request: Vec::new(),
                    answer: Vec::new(),
                    at: Location { file: file.to_owned(), line: p.line_at(pos) },
                });
            }
            (Some("command"), "request") => target = Target::Request,
            (Some("command"), "answer") => target = Target::Answer,
            (Some("dictionary"), "avp") => {
                raw.avps.push(parse_avp(&p, pos, &attrs)?);
                target = Target::Avp;
            }
            (Some("dictionary"), "extend") => {
                check_known(&p, pos, "extend", &attrs, &["avp"])?;
                let avp = required(&p, pos, "extend", &attrs, "avp")?.to_owned();
                raw.extends.push(RawExtend {
                    avp,
                    rules: Vec::new(),
                    at: Location { file: file.to_owned(), line: p.line_at(pos) },
                });
                target = Target::Extend;
            }
            (Some("avp"), "enum") | (Some("avp"), "item") => {
                check_known(&p, pos, "enum", &attrs, &["code", "name"])?;
                let code: i32 = number(&p, pos, "code", required(&p, pos, "enum", &attrs, "code")?)?;
                let name = required(&p, pos, "enum", &attrs, "name")?.to_owned();
                let avp = raw.avps.last_mut().expect("an <avp> is open: the parent check says so");
                if avp.ty != AvpType::Enumerated {
                    return Err(
                        p.err(pos, format!("avp {}: <enum> only belongs in an Enumerated AVP", avp.name))
                    );
                }
                if avp.enums.iter().any(|(c, _)| *c == code) {
                    return Err(
                        p.err(pos, format!("avp {}: enumeration value {code} defined twice", avp.name))
                    );
                }
                avp.enums.push((code, name));
            }
            (Some("request" | "answer" | "avp" | "extend"), "rule") => {
                let rule = parse_rule(&p, pos, &attrs)?;
                match target {
                    Target::Request => raw.commands.last_mut().expect("inside <command>").request.push(rule),
                    Target::Answer => raw.commands.last_mut().expect("inside <command>").answer.push(rule),
                    Target::Avp => {
                        let avp = raw.avps.last_mut().expect("inside <avp>");
                        if avp.ty != AvpType::Grouped {
                            return Err(p.err(
                                pos,
                                format!("avp {}: <rule> only belongs in a Grouped AVP", avp.name),
                            ));
                        }
                        avp.rules.push(rule);
                    }
                    Target::Extend => raw.extends.last_mut().expect("inside <extend>").rules.push(rule),
                    Target::None => return Err(p.err(pos, "<rule> outside request, answer, avp or extend")),
                }
            }
            (parent, el) => {
                let where_ = parent.map_or("at the top".to_owned(), |x| format!("inside <{x}>"));
                return Err(p.err(pos, format!("unexpected element <{el}> {where_}")));
            }
        }
        if !empty {
            stack.push(el);
        }
    }
    if !saw_root {
        return Err(p.err(0, "no <dictionary> root element"));
    }
    raw.files.push(file.to_owned());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Resolution.

impl RawSet {
    fn resolve(self) -> Result<Dictionary, DictError> {
        let at_err =
            |at: &Location, problem: String| DictError { file: at.file.clone(), line: at.line, problem };
        if self.avps.len() > DICTIONARY_AVPS_MAX {
            return Err(DictError {
                file: "(set)".into(),
                line: 0,
                problem: format!("more than {DICTIONARY_AVPS_MAX} AVPs"),
            });
        }
        // Later definitions with replace="true" override earlier ones; any other repeat is an error.
        let mut by_name: HashMap<String, u32> = HashMap::new();
        let mut by_code: HashMap<(u32, u32), u32> = HashMap::new();
        let mut kept: Vec<RawAvp> = Vec::with_capacity(self.avps.len());
        let mut rules_raw: Vec<Vec<RawRule>> = Vec::new();
        for mut a in self.avps {
            let same_name = by_name.get(&a.name).copied();
            let same_code = by_code.get(&(a.code, a.vendor)).copied();
            match (same_name, same_code) {
                (None, None) => {
                    let i = kept.len() as u32;
                    by_name.insert(a.name.clone(), i);
                    by_code.insert((a.code, a.vendor), i);
                    rules_raw.push(std::mem::take(&mut a.rules));
                    kept.push(a);
                }
                (Some(i), Some(j)) if i == j && a.replace => {
                    rules_raw[i as usize] = std::mem::take(&mut a.rules);
                    kept[i as usize] = a;
                }
                (n, c) => {
                    let other = &kept[n.or(c).expect("one of them matched") as usize];
                    let why = if a.replace {
                        "replace=\"true\" needs the same name, code and vendor"
                    } else {
                        "add replace=\"true\" to override it on purpose"
                    };
                    return Err(at_err(
                        &a.at,
                        format!(
                            "avp {} (code {}, vendor {}) clashes with avp {} (code {}, vendor {}) defined at {}; {why}",
                            a.name, a.code, a.vendor, other.name, other.code, other.vendor, other.at
                        ),
                    ));
                }
            }
        }
        let resolve = |rules: &[RawRule]| -> Result<Vec<Rule>, DictError> {
            let mut out: Vec<Rule> = Vec::with_capacity(rules.len());
            for r in rules {
                let Some(&i) = by_name.get(&r.name) else {
                    return Err(at_err(
                        &r.at,
                        format!("rule names avp `{}`, which no dictionary file defines", r.name),
                    ));
                };
                if out.iter().any(|x| x.avp.0 == i) {
                    return Err(at_err(&r.at, format!("avp `{}` has two rules in the same group", r.name)));
                }
                out.push(Rule { avp: AvpIndex(i), min: r.min, max: r.max });
            }
            if out.len() > RULES_PER_GROUP_MAX {
                let at = &rules[0].at;
                return Err(at_err(at, format!("more than {RULES_PER_GROUP_MAX} rules in one group")));
            }
            Ok(out)
        };
        let avp_count = kept.len();
        let mut avps: Vec<AvpDef> = Vec::with_capacity(avp_count);
        for (a, rules) in kept.into_iter().zip(&rules_raw) {
            let mut enums = a.enums;
            enums.sort_unstable_by_key(|(k, _)| *k);
            avps.push(AvpDef {
                rules: RuleSet::new(resolve(rules)?, avp_count),
                name: a.name,
                code: AvpCode(a.code),
                vendor: VendorId(a.vendor),
                ty: a.ty,
                must: a.must,
                must_not: a.must_not,
                enums,
                source: a.at,
            });
        }
        for x in &self.extends {
            let Some(&i) = by_name.get(&x.avp) else {
                return Err(at_err(
                    &x.at,
                    format!("<extend> names avp `{}`, which no dictionary file defines", x.avp),
                ));
            };
            if avps[i as usize].ty != AvpType::Grouped {
                return Err(at_err(&x.at, format!("<extend> names avp `{}`, which is not Grouped", x.avp)));
            }
            let mut all: Vec<RawRule> = Vec::new();
            for r in &x.rules {
                all.push(RawRule { name: r.name.clone(), min: r.min, max: r.max, at: r.at.clone() });
            }
            let extra = resolve(&all)?;
            for r in extra {
                if avps[i as usize].rules.slot(r.avp).is_some() {
                    let name = &avps[r.avp.0 as usize].name;
                    return Err(at_err(&x.at, format!("<extend avp=\"{}\"> repeats member `{name}`", x.avp)));
                }
                let target = &mut avps[i as usize].rules;
                if target.len() == RULES_PER_GROUP_MAX {
                    return Err(at_err(&x.at, format!("more than {RULES_PER_GROUP_MAX} rules in one group")));
                }
                target.push(r, avp_count);
            }
        }
        let mut commands = Vec::with_capacity(self.commands.len());
        let mut command_index = HashMap::new();
        for c in &self.commands {
            if command_index.insert((c.application, c.code), commands.len()).is_some() {
                return Err(at_err(
                    &c.at,
                    format!(
                        "command {} (code {}) defined twice for application {}",
                        c.name, c.code, c.application
                    ),
                ));
            }
            commands.push(CommandDef {
                name: c.name.clone(),
                short: c.short.clone(),
                code: CommandCode(c.code),
                application: ApplicationId(c.application),
                request: RuleSet::new(resolve(&c.request)?, avp_count),
                answer: RuleSet::new(resolve(&c.answer)?, avp_count),
            });
        }
        let mut direct_ietf = vec![NONE; DIRECT_CODES];
        let mut direct_tgpp = vec![NONE; DIRECT_CODES];
        for (&(code, vendor), &i) in &by_code {
            if (code as usize) < DIRECT_CODES && vendor == 0 {
                direct_ietf[code as usize] = i;
            } else if (code as usize) < DIRECT_CODES && vendor == VendorId::TGPP.0 {
                direct_tgpp[code as usize] = i;
            }
        }
        let hot = avps
            .iter()
            .map(|a| HotAvp {
                ty: a.ty,
                must_not_mandatory: a.must_not.0 & AvpFlags::MANDATORY != 0,
                has_enums: !a.enums.is_empty(),
            })
            .collect();
        let mut command_index: Vec<_> = command_index.into_iter().collect();
        command_index.sort_unstable();
        Ok(Dictionary {
            avps,
            hot,
            direct_ietf,
            direct_tgpp,
            by_code,
            by_name,
            commands,
            command_index,
            applications: self
                .applications
                .into_iter()
                .map(|(id, name)| ApplicationDef { id: ApplicationId(id), name })
                .collect(),
            vendors: self.vendors.into_iter().map(|(id, n)| (VendorId(id), n)).collect(),
            files: self.files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str = r#"<?xml version="1.0"?>
<dictionary>
  <application id="0" name="Base">
    <command code="280" name="Device-Watchdog" short="DW">
      <request>
        <rule avp="Origin-Host" min="1" max="1"/>
      </request>
      <answer>
        <rule avp="Origin-Host" min="1" max="1"/>
      </answer>
    </command>
  </application>
  <avp name="Origin-Host" code="264" type="DiamIdent" must="M"/>
</dictionary>"#;

    fn load(text: &str) -> Result<Dictionary, DictError> {
        Dictionary::from_sources([("t.xml".to_owned(), text.to_owned())])
    }

    #[test]
    fn bad_type_names_file_and_line() {
        let e = load(MINI).unwrap_err();
        assert_eq!(e.file, "t.xml");
        assert_eq!(e.line, 13);
        assert!(e.problem.contains("unknown type `DiamIdent`"), "{e}");
    }

    #[test]
    fn unresolved_rule_is_an_error() {
        let text = MINI.replace("DiamIdent", "DiameterIdentity").replace(
            "rule avp=\"Origin-Host\" min=\"1\" max=\"1\"/>\n      </answer>",
            "rule avp=\"Nope\"/>\n      </answer>",
        );
        let e = load(&text).unwrap_err();
        assert!(e.problem.contains("`Nope`"), "{e}");
        assert_eq!(e.line, 9);
    }

    #[test]
    fn loads_and_looks_up() {
        let d = load(&MINI.replace("DiamIdent", "DiameterIdentity")).unwrap();
        let i = d.lookup(AvpCode(264), VendorId(0)).unwrap();
        assert_eq!(d.avp(i).name, "Origin-Host");
        let c = d.command(ApplicationId(4), CommandCode(280)).unwrap();
        assert_eq!(c.request.rules()[0].min, 1);
    }

    #[test]
    fn embedded_dictionaries_load() {
        let d = Dictionary::embedded().unwrap_or_else(|e| panic!("{e}"));
        for name in ["Session-Id", "CC-Request-Type", "Multiple-Services-Credit-Control", "Rating-Group"] {
            assert!(d.by_name(name).is_some(), "{name} missing");
        }
        assert!(d.command(ApplicationId::CREDIT_CONTROL, CommandCode::CREDIT_CONTROL).is_some());
        assert!(d.command(ApplicationId::COMMON, CommandCode::CAPABILITIES_EXCHANGE).is_some());
    }
}
