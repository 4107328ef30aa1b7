//! Operator tools: `gyro ccr`, which talks to a Diameter server as a client, `gyro load`, which
//! loads one with credit-control traffic and measures it, and `gyro journal verify|inspect`,
//! which read a journal directory.
//!
//! Owns: command-line tools built on the public library. Like `cli`, this is an edge of the
//! program: it reads files and prints. Sockets and the clock stay in `net::client`.
//! Must not touch: the server side (`peer`, the connection tasks, the credit-control engine,
//! the ledger); tools see a server only through the wire, as any other client would, and a
//! journal only through its files, which they never change. `gyro account|invoice|plan` call the
//! admin HTTP API, as any other client would.

pub mod admin;
pub mod ccr;
pub mod journal;
pub mod load;
