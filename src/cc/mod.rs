//! The credit-control application (RFC 4006 §5–§8, 3GPP TS 32.299 §6): sessions, per-MSCC
//! decisions, events, and the answers they produce.
//!
//! Owns: typed CCR parsing (`ccr`), CCA writing (`cca`), session state and its supervision
//! (Tcc), grant sizing, and the mapping of ledger outcomes to Result-Codes. Uses `rating` for
//! prices and `ledger` for money. Must not touch: sockets, tokio, the journal's internals or
//! metrics. Time comes in as [`Now`].

pub mod cca;
pub mod ccr;
mod engine;
mod redo;
mod sessions;

pub use engine::{describe_record, RecordFilter};
pub use engine::{AdminOp, Engine, EngineConfig, NoJournal, Now, RecordSink, SweepStats};
pub use engine::{AnswerView, RatingGroupView, SessionCursor, SessionFilter, SessionState, SessionView};
pub use redo::{
    catalog_edit_entry, catalog_entry, read_catalog_edit_entry, read_catalog_entry, CatalogState, RecordError,
};
pub use sessions::hash_session_id;
