//! An owned AVP tree, for tools, snapshots and round-trip tests (not the hot path).
//!
//! Grouped AVPs are recognised through the dictionary; AVPs the dictionary does not know stay
//! raw bytes.

use std::fmt::Write;

use bytes::BytesMut;

use super::avp::{AvpFlags, AvpFrameError, AvpIter};
use super::codes::{AvpCode, VendorId};
use super::dictionary::Dictionary;
use super::encode::{AvpSpec, Encoder};
use super::header::Header;
use super::message::MessageRef;
use super::types::{decode_value, AvpType, Value};
use crate::limits::AVP_NESTING_DEPTH_MAX;

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Data {
    Raw(Vec<u8>),
    Grouped(Vec<Node>),
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Node {
    pub code: AvpCode,
    pub flags: AvpFlags,
    pub vendor: VendorId,
    pub data: Data,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OwnedMessage {
    pub header: Header,
    pub avps: Vec<Node>,
}

impl OwnedMessage {
    /// Decodes a framed message; Grouped AVPs (per the dictionary) become subtrees.
    pub fn decode(dict: &Dictionary, msg: &MessageRef<'_>) -> Result<Self, AvpFrameError> {
        Ok(Self { header: msg.header, avps: decode_nodes(dict, msg.body, 0)? })
    }

    /// Encodes the message; header length is computed, other header fields are kept.
    pub fn encode(&self, buf: &mut BytesMut) -> usize {
        let h = self.header;
        let mut e = Encoder::new(buf, h.flags, h.command, h.application, h.hop_by_hop, h.end_to_end);
        encode_nodes(&mut e, &self.avps);
        e.finish()
    }
}

fn decode_nodes(dict: &Dictionary, buf: &[u8], depth: usize) -> Result<Vec<Node>, AvpFrameError> {
    let mut out = Vec::new();
    for a in AvpIter::new(buf) {
        let a = a?;
        let grouped = depth + 1 < AVP_NESTING_DEPTH_MAX
            && dict.lookup(a.code, a.vendor).is_some_and(|i| dict.avp(i).ty == AvpType::Grouped);
        let data = if grouped {
            Data::Grouped(decode_nodes(dict, a.data, depth + 1)?)
        } else {
            Data::Raw(a.data.to_vec())
        };
        out.push(Node { code: a.code, flags: a.flags, vendor: a.vendor, data });
    }
    Ok(out)
}

fn encode_nodes(e: &mut Encoder<'_>, nodes: &[Node]) {
    for n in nodes {
        let spec = AvpSpec { code: n.code, vendor: n.vendor, flags: n.flags };
        match &n.data {
            Data::Raw(b) => {
                e.bytes(spec, b);
            }
            Data::Grouped(members) => {
                let g = e.begin_group(spec);
                encode_nodes(e, members);
                e.end_group(g);
            }
        }
    }
}

/// A readable, stable rendering of a message, used in snapshots and by `gyro ccr`.
pub fn dump(dict: &Dictionary, msg: &MessageRef<'_>) -> String {
    let h = msg.header;
    let name = dict.command(h.application, h.command).map_or("Unknown", |c| c.name.as_str());
    let kind = if h.flags.is_request() { "Request" } else { "Answer" };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{name}-{kind} code={} app={} flags={:?} hbh={:#010x} e2e={:#010x} len={}",
        h.command.0, h.application.0, h.flags, h.hop_by_hop, h.end_to_end, h.length
    );
    dump_avps(dict, msg.body, 1, &mut s);
    s
}

fn dump_avps(dict: &Dictionary, buf: &[u8], depth: usize, s: &mut String) {
    for a in AvpIter::new(buf) {
        let indent = "  ".repeat(depth);
        let a = match a {
            Ok(a) => a,
            Err(e) => {
                let _ = writeln!(s, "{indent}!! {e}");
                return;
            }
        };
        let def = dict.lookup(a.code, a.vendor).map(|i| dict.avp(i));
        let name = def.map_or("Unknown", |d| d.name.as_str());
        let vendor = if a.vendor.0 == 0 { String::new() } else { format!(" v={}", a.vendor.0) };
        let _ = write!(s, "{indent}{name}({}{vendor}) {:?}", a.code.0, a.flags);
        match def.map(|d| (d, decode_value(d.ty, a.data))) {
            Some((d, Ok(Value::Grouped(inner)))) if depth < AVP_NESTING_DEPTH_MAX => {
                let _ = writeln!(s);
                let _ = d;
                dump_avps(dict, inner, depth + 1, s);
            }
            Some((d, Ok(Value::Enumerated(v)))) => {
                let _ = writeln!(s, " = {v} {}", d.enum_name(v).unwrap_or("?"));
            }
            Some((_, Ok(v))) => {
                let _ = writeln!(s, " = {v}");
            }
            Some((_, Err(e))) => {
                let _ = writeln!(s, " !! {e}");
            }
            None => {
                let _ = writeln!(s, " = {}", Value::OctetString(a.data));
            }
        }
    }
}
