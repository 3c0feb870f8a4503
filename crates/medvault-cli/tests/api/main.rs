//! End-to-end tests: the real `medvault` binary, driven over HTTP and its CLI. The harness (the
//! server, personas, request and assertion helpers) is `medvault_testkit`'s.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod anonymous;
mod backup;
mod bad_input;
mod breach;
mod bulk;
mod bundle;
mod cli;
mod compliance;
mod config;
mod crud;
mod hardening;
mod identity;
mod import;
mod ledger;
mod node_keys;
mod oauth_app;
mod operations;
mod policy;
mod postgres;
mod responses;
mod search;
mod security;
mod sentinel;
mod share;
mod subject;
mod subscriptions;
mod tls;
mod tokens;
mod types;
mod witness;

use medvault_testkit::Medvault;

/// The binary under test (Cargo names its path only to this crate's own tests).
pub(crate) const MEDVAULT: Medvault = Medvault::at(env!("CARGO_BIN_EXE_medvault"));
