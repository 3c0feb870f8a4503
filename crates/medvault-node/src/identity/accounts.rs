//! Accounts (`medvault user create`, `user disable`, …): a unique id (`usr_…`), a role, an
//! Argon2id password hash; the user name is stored only blinded (lookup) and sealed under the
//! `@identity` data key (display).

use medvault_auth::password::{self, Password};
use medvault_core::Role;
use medvault_crypto::BlindValue;
use medvault_store::{StoreError, UserRow, write_with};

use crate::error::{Error, ErrorKind, IssueCode};
use crate::identity::{identity_key, open, random_id, seal};
use crate::node::Node;

/// The normalised form of a user name, or why it is not acceptable.
///
/// # Errors
/// 400 naming the rule.
pub fn normalise_name(name: &str) -> Result<String, Error> {
    let n = name.trim().to_lowercase();
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if n.is_empty() || n.len() > 64 || !n.chars().all(ok_char) {
        return Err(Error::bad_request(
            "user names are 1-64 characters: letters, digits, '.', '_', '-' and '@'",
        ));
    }
    Ok(n)
}

fn name_index(node: &Node, normalised: &str) -> Result<BlindValue, Error> {
    let k = node
        .keys
        .param_key("@user", "name")
        .map_err(|e| Error::internal(&e))?;
    Ok(k.blind(normalised.as_bytes()))
}

/// The FHIR resource a person is: a patient's account names their Patient, a clinician's their
/// Practitioner (which care teams and encounters name, so the access policy can see their care
/// relationships).
#[derive(Debug, Clone, Copy)]
pub enum FhirUser<'a> {
    /// Not linked.
    None,
    /// `Patient/<id>`.
    Patient(&'a medvault_core::ResourceId),
    /// `Practitioner/<id>`.
    Practitioner(&'a medvault_core::ResourceId),
}

/// Creates an account; a patient's account is linked to their Patient resource. Blocking
/// (Argon2id): call off async threads.
///
/// # Errors
/// 400 for a bad name or a password the policy refuses; 409 if the name is taken.
pub fn create_user(
    node: &Node,
    name: &str,
    role: Role,
    link: FhirUser<'_>,
    password: &Password,
) -> Result<String, Error> {
    let normalised = normalise_name(name)?;
    let (patient, practitioner) = match link {
        FhirUser::Patient(p) => (Some(p), None),
        FhirUser::Practitioner(p) => (None, Some(p)),
        FhirUser::None => (None, None),
    };
    if (role == Role::Patient) != patient.is_some() {
        return Err(Error::bad_request(
            "a patient's account names their Patient resource (--patient ID), and only theirs does",
        ));
    }
    password::check_policy(password, &normalised).map_err(|e| Error::bad_request(e.to_string()))?;
    let hash = password::hash_password(password).map_err(|e| Error::internal(&e))?;
    let key = identity_key(node)?;
    let id = random_id("usr_")?;
    let row = UserRow {
        id: id.clone(),
        name_index: name_index(node, &normalised)?,
        name_sealed: seal(&key, &id, "name", normalised.as_bytes())?,
        role: role.as_str().to_owned(),
        password_hash: hash,
        disabled: false,
        created_micros: node.clock.now_micros(),
        totp: None,
        totp_pending: None,
        totp_last_step: None,
        failed_logins: 0,
        locked_until_micros: 0,
        patient_id: patient.map(|p| p.to_string()),
        practitioner: practitioner.map(|p| format!("Practitioner/{p}")),
        last_login_micros: None,
    };
    match write_with(node.store.as_ref(), move |tx| tx.put_user(&row)) {
        Ok(()) => Ok(id),
        Err(StoreError::Conflict) => Err(Error::new(
            ErrorKind::Conflict,
            IssueCode::Duplicate,
            "that user name is taken",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Finds a user by name.
///
/// # Errors
/// 400 for a malformed name; store failures.
pub fn find_user(node: &Node, name: &str) -> Result<Option<UserRow>, Error> {
    let index = name_index(node, &normalise_name(name)?)?;
    Ok(node.store.user_by_name(&index)?)
}

/// The user's name as stored (sealed).
///
/// # Errors
/// 500 if it does not open.
pub fn user_name(node: &Node, user: &UserRow) -> Result<String, Error> {
    let key = identity_key(node)?;
    let plain = open(&key, &user.id, "name", &user.name_sealed)?;
    String::from_utf8(plain.to_vec()).map_err(|e| Error::internal(&e))
}

/// What an administrator can change about an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountChange {
    /// Refuse logins and end every session.
    Disable,
    /// Allow logins again.
    Enable,
    /// Clear a lockout and the failure count.
    Unlock,
    /// Link a staff account to its Practitioner resource (`None` unlinks it).
    Practitioner(Option<medvault_core::ResourceId>),
}

/// Applies `change` to the user named `name`; returns the user id.
///
/// # Errors
/// 404 for an unknown user; 400 for linking a patient's account to a Practitioner.
pub fn change_account(node: &Node, name: &str, change: AccountChange) -> Result<String, Error> {
    let user = find_user(node, name)?.ok_or_else(|| Error::not_found("no such user"))?;
    if matches!(change, AccountChange::Practitioner(_)) && user.role == Role::Patient.as_str() {
        return Err(Error::bad_request(
            "a patient's account cannot be linked to a Practitioner",
        ));
    }
    let id = user.id.clone();
    write_with(node.store.as_ref(), move |tx| {
        let mut u = tx
            .user(&user.id)?
            .ok_or_else(|| StoreError::Backend("user vanished".into()))?;
        match change {
            AccountChange::Disable => {
                u.disabled = true;
                tx.delete_sessions(&u.id, None)?;
            }
            AccountChange::Enable => u.disabled = false,
            AccountChange::Unlock => {
                u.failed_logins = 0;
                u.locked_until_micros = 0;
            }
            AccountChange::Practitioner(p) => {
                u.practitioner = p.map(|p| format!("Practitioner/{p}"));
            }
        }
        tx.put_user(&u)
    })?;
    Ok(id)
}

/// Lists accounts for `medvault user list`: id, name, role, state.
///
/// # Errors
/// Store failures; 500 if a name does not open.
pub fn list_users(node: &Node) -> Result<Vec<(UserRow, String)>, Error> {
    node.store
        .users()?
        .into_iter()
        .map(|u| {
            let name = user_name(node, &u)?;
            Ok((u, name))
        })
        .collect()
}
