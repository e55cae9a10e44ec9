//! The test harness, for the tests and the benches (which include it with
//! `#[path = "../tests/common/mod.rs"] mod common;`), one file per actor:
//!
//! - [`upstream`]: the mock upstream that counts calls and records them;
//! - [`gateway`]: settings, the in-process [`Gateway`], the [`Binary`] as a
//!   child process ([`Running`]), and [`Addrs`], what has their addresses;
//! - [`client`]: requests to a gateway ([`Call`]) and their answers ([`Got`]);
//! - [`admin`]: admin calls with the test token;
//! - [`metrics`]: scraping and waiting for the write-back;
//! - [`faults`]: a failing store, and checks for leaked secrets;
//! - [`timing`]: latency percentiles and the rows benches print;
//! - [`replicas`]: the replica tests every shared store passes.
//!
//! Not every test or bench uses every helper.
#![allow(dead_code, unused_imports)]

pub mod admin;
pub mod client;
pub mod faults;
pub mod gateway;
pub mod metrics;
pub mod replicas;
pub mod timing;
pub mod upstream;

pub use admin::*;
pub use client::*;
pub use faults::*;
pub use gateway::*;
pub use metrics::*;
pub use timing::*;
pub use upstream::*;
