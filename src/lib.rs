//! gyro: an online charging system speaking Diameter credit control (RFC 6733, RFC 4006/8506,
//! 3GPP TS 32.299).
//!
//! # Layout
//! - [`limits`]: every numeric limit, with compile-time checks between them.
//! - [`diameter`]: the sans-IO wire protocol: framing, AVPs, types, dictionaries, validation.
//! - [`peer`]: the sans-IO peer state machine (CER/DWR/DPR, watchdog).
//! - [`replay`]: remembered answers for duplicate requests (transport and CCR-E).
//! - [`journal`]: the write-ahead journal: group commit, recovery, snapshots (opaque payloads).
//! - [`durable`]: the engine's records through the journal; answers wait for durability.
//! - [`settlement`]: invoices (EN 16931, UBL 2.1), numbering, payment adapters, e-mails.
//! - [`net`]: sockets and tasks; the only module with I/O.
//! - [`config`]: the TOML configuration, validated into per-module options.
//! - [`cli`]: the `gyro` command line.
//!
//! See ARCHITECTURE.md for the data flow and the invariants.

pub mod catalog;
pub mod cc;
pub mod cli;
pub mod config;
pub mod diameter;
pub mod durable;
pub mod http;
pub mod journal;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod peer;
pub mod rating;
pub mod reload;
pub mod replay;
pub mod settlement;
pub mod tools;
