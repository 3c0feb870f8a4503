//! medvault's service layer: everything the node does, with no HTTP in it.
//!
//! - [`node`]: the node itself ([`Node`]): its stores, key ring and ledger, opened from a data
//!   directory; [`node_identity`] is its long-lived public identity.
//! - FHIR operations: [`ops`] (read, write, history under an access context), [`search`],
//!   [`bundle`] (batch and transaction), [`route`] (a FHIR request's interaction), and
//!   [`capability`] (the CapabilityStatement).
//! - Access decisions: [`authz`] (the policy's facts and the guard every resource passes).
//! - The ledger service: [`ledger`] (leaves, checkpoints, tiles, proofs), [`witness`] (both
//!   ways), [`verify`] (the whole-node check), [`audit`] (the access log's typed record),
//!   [`audit_view`] (the access log as FHIR `AuditEvent`s), [`background`] (checkpointing and
//!   cosigning while the node serves).
//! - Administration: [`admin`] (key rotation, crypto-shredding, expunging a version).
//! - Sharing: [`share`] (sealed bundles between nodes) and [`backup_file`].
//! - Identity: [`identity`] (accounts, login and sessions, API tokens, OAuth2 clients and
//!   tokens, passkeys, break-glass, and the gates a request passes before any resource is
//!   decided).
//!
//! Every operation returns [`Error`], a typed domain error ([`ErrorKind`] plus a message safe to
//! show); only the HTTP server maps it to a status and an `OperationOutcome`.

pub mod access_index;
pub mod admin;
pub mod alerts;
pub mod archive;
pub mod audit;
pub mod audit_view;
pub mod authz;
pub mod background;
pub mod backup_file;
pub mod bulk;
pub mod bundle;
pub mod capability;
pub mod change;
pub mod clock;
pub mod ctx;
pub mod error;
pub mod identity;
pub mod import;
pub mod ledger;
pub mod messaging;
pub mod node;
pub mod node_identity;
pub mod operations;
pub mod ops;
pub mod published;
pub mod records;
pub mod responses;
pub mod route;
pub mod search;
pub mod sentinel;
pub mod share;
pub mod subscriptions;
pub mod verify;
pub mod witness;

pub use error::{Error, ErrorKind, IssueCode};
pub use node::Node;
