//! The Diameter wire protocol, sans-IO (RFC 6733 §3–§4, §7).
//!
//! Owns: framing, the header, AVP views, data types, the encoder, runtime dictionaries,
//! dictionary-driven validation and error answers. Must not touch: tokio, clocks, sockets, or
//! any other gyro module except `limits`. Everything here is a pure function of its input, so
//! tests and fuzzers drive it without a runtime.

pub mod answer;
pub mod avp;
pub mod codes;
pub mod dictionary;
pub mod encode;
pub mod header;
pub mod message;
pub mod tree;
pub mod types;
pub mod validate;

pub use answer::LocalIdentity;
pub use avp::{AvpFlags, AvpIter, AvpRef};
pub use codes::{ApplicationId, AvpCode, CommandCode, ResultCode, VendorId};
pub use dictionary::Dictionary;
pub use encode::{AvpSpec, Encoder};
pub use header::{frame, frame_within, CommandFlags, FrameError, Header};
pub use message::MessageRef;
pub use validate::{validate_answer, validate_request, Invalid, Violation};
