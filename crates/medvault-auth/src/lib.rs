//! medvault's identity primitives, free of I/O: password policy and Argon2id hashing
//! ([`password`]), TOTP second factors ([`totp`]), single-use recovery codes ([`recovery`]) and
//! SMART on FHIR v2 scopes ([`scopes`]).
//!
//! Secrets are zeroized types with redacted `Debug`. Everything slow (Argon2id) is a plain
//! function; callers run it off their async threads.

pub mod password;
pub mod recovery;
pub mod scopes;
pub mod totp;

/// Errors from identity primitives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A new password breaks the policy; the message says which rule, never the password.
    #[error("password rejected: {0}")]
    PasswordPolicy(&'static str),
    /// A stored hash is malformed.
    #[error("stored password hash is malformed")]
    BadHash,
    /// Hashing failed.
    #[error("password hashing failed")]
    Hashing,
    /// The random generator failed.
    #[error("random generator failed")]
    Random,
    /// A TOTP secret or parameter is invalid.
    #[error("TOTP: {0}")]
    Totp(&'static str),
}
