//! Operator tools that talk to a Diameter server as a client: `gyro ccr`.
//!
//! Owns: command-line tools built on the public library. Like `cli`, this is an edge of the
//! program: it reads files and prints. Sockets and the clock stay in `net::client`.
//! Must not touch: the server side (`peer`, the connection tasks, the credit-control engine,
//! the ledger); tools see a server only through the wire, as any other client would.

pub mod ccr;
