//! What medvault's test binaries and benches share, so that each fixture exists once.
//!
//! - [`e2e`]: the real `medvault` binary: [`Medvault`] names it (only the CLI crate's own tests
//!   know its path, `env!("CARGO_BIN_EXE_medvault")`), [`Server`] is one `medvault serve` on a
//!   free port with an admin API token, and the request helpers the end-to-end tests use.
//! - [`people`]: personas on a running server: accounts made with the CLI, TOTP enrolment,
//!   signing in with a second factor, clinicians linked to a Practitioner, patients' own
//!   accounts, care teams.
//! - [`oauth`]: a SMART app: registration, the authorization request, approval, the code and
//!   refresh-token exchanges.
//! - [`fhir`]: resource builders (patients, observations, consents) and what tests read out of
//!   answers (ids in a Bundle, entry statuses, OperationOutcomes).
//! - [`node`]: nodes in process: [`open_node`] is the one place a test or bench opens a node,
//!   [`TwoNodes`] two nodes registered as each other's peers, [`api_token`] a role's token.
//! - [`postgres`]: a scratch PostgreSQL schema, when `MEDVAULT_TEST_POSTGRES_URL` names a server.
//!
//! Every helper fails the calling test with a message (a panic) rather than returning an error:
//! a fixture that cannot be set up is a failed test.

// A failed expectation here is a failed test; each `expect` says what was expected.
#![allow(clippy::expect_used)]

pub mod e2e;
pub mod fhir;
pub mod node;
pub mod oauth;
pub mod people;
pub mod postgres;
pub mod receiver;

pub use e2e::{CliOutput, Medvault, Server};
pub use node::{TwoNodes, api_token, open_node, scratch_node};
pub use people::{PASSWORD, Person};
