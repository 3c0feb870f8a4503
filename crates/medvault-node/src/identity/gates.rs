//! The coarse gates a request passes before any resource is decided: each a pure decision over
//! who authenticated (role, session, assurance level, scopes, sign-in time), returning the rule
//! that refused and why. A [`Refusal`] becomes an error in one place ([`Refusal::into_error`]);
//! the server adds the `WWW-Authenticate` challenge a stale sign-in gets. The rule goes to the
//! access log.

use std::time::Duration;

use medvault_core::{Aal, FhirAccess, Role};

use crate::error::{Error, ErrorKind, IssueCode};
use crate::identity::Authenticated;
use crate::route::Target;

/// Why a gate refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The rule, for the access log (`aal2-required`, `step-up`, `share-gate`, `role-gate`, …).
    pub rule: &'static str,
    /// What the caller must change.
    pub message: String,
    /// `Some(max_age)` when a fresh sign-in would pass (RFC 9470: 401 with
    /// `insufficient_user_authentication`); `None` for a plain 403.
    pub sign_in_within: Option<u64>,
}

impl Refusal {
    fn forbidden(rule: &'static str, message: impl Into<String>) -> Self {
        Self {
            rule,
            message: message.into(),
            sign_in_within: None,
        }
    }

    /// The refusal as an error: 403, or 401 for a stale sign-in (RFC 9470
    /// `insufficient_user_authentication`, which the server's answer names with `max_age`).
    pub fn into_error(self) -> Error {
        let (status, code) = match self.sign_in_within {
            Some(_) => (ErrorKind::Unauthenticated, IssueCode::Login),
            None => (ErrorKind::Forbidden, IssueCode::Forbidden),
        };
        Error::new(status, code, self.message).denied_by(self.rule)
    }
}

/// True if the caller proved a second factor: AAL2 or above.
fn with_second_factor(who: &Authenticated) -> bool {
    who.aal.is_some_and(|aal| aal >= Aal::Two)
}

/// A person's session reaches data only after a second factor (AAL2); API tokens and apps'
/// tokens are not sessions and pass.
pub fn second_factor(who: &Authenticated) -> Result<(), Refusal> {
    if who.session.is_none() || with_second_factor(who) {
        Ok(())
    } else {
        Err(Refusal::forbidden(
            "aal2-required",
            "this session has no second factor: enroll one (POST /auth/totp/enroll) and log in again",
        ))
    }
}

/// A sensitive action (key rotation, erasure, break-glass): a person in one of `roles`
/// (`who_may` names them for the message), in a session with a second factor that signed in
/// within `window` of `now` (microseconds).
pub fn step_up(
    who: &Authenticated,
    roles: &[Role],
    who_may: &str,
    now: i64,
    window: Duration,
) -> Result<(), Refusal> {
    if !roles.contains(&who.role) || who.session.is_none() || !with_second_factor(who) {
        return Err(Refusal::forbidden(
            "step-up",
            format!(
                "this action needs {who_may} signed in with a second factor (API and app tokens cannot)"
            ),
        ));
    }
    let max_age = window.as_secs();
    let window = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
    if who.auth_time_micros.is_none_or(|t| now - t > window) {
        return Err(Refusal {
            rule: "step-up",
            message: format!(
                "this action needs a recent sign-in: sign in again (password and second factor, or a passkey) and retry within {max_age} seconds"
            ),
            sign_in_within: Some(max_age),
        });
    }
    Ok(())
}

/// The role gate, before the access policy decides each resource: whether `role` reaches
/// `target` at all (`audit_view`: the target is the `AuditEvent` view; `scoped`: an app's
/// scopes narrow the caller). A patient reaches data only through scopes bound to their own
/// compartment.
///
/// # Errors
/// The refusal (rule `role-gate`).
pub fn role_gate(
    role: Role,
    scoped: bool,
    audit_view: bool,
    target: &Target,
) -> Result<(), Refusal> {
    if *target == Target::Metadata {
        return Ok(());
    }
    if role == Role::Patient && scoped {
        // Their compartment through their scopes; the audit trail only as their own accounting
        // of disclosures (the audit view forces patient=<their id>).
        return Ok(());
    }
    let why = match (role.fhir_access(), audit_view) {
        (FhirAccess::Full, false) => return Ok(()),
        (FhirAccess::Full, true) if role == Role::Admin => return Ok(()),
        (FhirAccess::AuditTrail, true) => return Ok(()),
        (FhirAccess::AuditTrail, false) => "this role may only read AuditEvent resources",
        (FhirAccess::Full, true) => "the audit trail is for admins, auditors and privacy officers",
        (FhirAccess::None, _) => {
            "this account reaches its own records only through a patient session or app"
        }
    };
    Err(Refusal::forbidden("role-gate", why))
}

/// Sharing with another node: clinical staff (for care) and admins (release of information),
/// in their own sessions or with API tokens; never apps.
pub fn share(who: &Authenticated) -> Result<(), Refusal> {
    if who.scopes.is_none() && matches!(who.role, Role::Admin | Role::Clinician | Role::Nurse) {
        Ok(())
    } else {
        Err(Refusal::forbidden(
            "share-gate",
            "sharing with another node is for clinical staff and admins, not apps or other roles",
        ))
    }
}

/// The privacy officer's alerts: that role, in a session with a second factor.
pub fn privacy_officer(who: &Authenticated) -> Result<(), Refusal> {
    if who.role == Role::PrivacyOfficer && who.session.is_some() && with_second_factor(who) {
        Ok(())
    } else {
        Err(Refusal::forbidden(
            "role-gate",
            "alerts are for the privacy officer, signed in with a second factor",
        ))
    }
}

/// The compliance report: admins, auditors and privacy officers, in a session with a second
/// factor or with an API token; never apps.
pub fn compliance(who: &Authenticated) -> Result<(), Refusal> {
    if matches!(who.role, Role::Admin | Role::Auditor | Role::PrivacyOfficer)
        && (who.session.is_none() || with_second_factor(who))
        && who.scopes.is_none()
    {
        Ok(())
    } else {
        Err(Refusal::forbidden(
            "role-gate",
            "the compliance report is for admins, auditors and privacy officers, signed in with a second factor or with an API token",
        ))
    }
}

/// Breach response: admins and privacy officers assess breaches and keep the register;
/// auditors may read the register (`write` false). In a session with a second factor, or
/// with an API token; never apps.
pub fn breach(who: &Authenticated, write: bool) -> Result<(), Refusal> {
    register(who, write, "breach response")
}

/// Data subjects' requests: the same people as [`breach`].
pub fn subject_requests(who: &Authenticated, write: bool) -> Result<(), Refusal> {
    register(who, write, "data subjects' requests")
}

fn register(who: &Authenticated, write: bool, what: &str) -> Result<(), Refusal> {
    let role = match who.role {
        Role::Admin | Role::PrivacyOfficer => true,
        Role::Auditor => !write,
        _ => false,
    };
    if role && (who.session.is_none() || with_second_factor(who)) && who.scopes.is_none() {
        Ok(())
    } else {
        Err(Refusal::forbidden(
            "role-gate",
            format!(
                "{what} are for admins and privacy officers (auditors may read the register), signed in with a second factor or with an API token"
            ),
        ))
    }
}

/// A patient's export of their own data (`$export-my-data`): the patient themself, in their
/// own session (not an app), for their own Patient resource only.
pub fn own_export(who: &Authenticated, patient: &str) -> Result<(), Refusal> {
    // A patient's session carries their compartment's scopes; an app's token names its client.
    if who.role == Role::Patient
        && who.session.is_some()
        && who.client.is_none()
        && who.patient.as_deref() == Some(patient)
    {
        Ok(())
    } else {
        Err(Refusal::forbidden(
            "role-gate",
            "$export-my-data is for the patient themself, signed in; staff answer a request at /admin/subjects/requests/{id}/export",
        ))
    }
}

/// The patient portal's requests (`/portal/requests`): a patient in their own session (not an
/// app), signed in with a second factor; their own Patient id.
pub fn own_portal(who: &Authenticated) -> Result<&str, Refusal> {
    match who.patient.as_deref() {
        Some(p)
            if who.role == Role::Patient
                && who.session.is_some()
                && who.client.is_none()
                && with_second_factor(who) =>
        {
            Ok(p)
        }
        _ => Err(Refusal::forbidden(
            "role-gate",
            "the portal's requests are for patients signed in to their own account with a second factor; staff use /admin/subjects/requests",
        )),
    }
}

/// Token introspection: admins, with a second factor when in a session; never apps.
pub fn introspection(who: &Authenticated) -> Result<(), Refusal> {
    if who.role == Role::Admin
        && (who.session.is_none() || with_second_factor(who))
        && who.scopes.is_none()
    {
        Ok(())
    } else {
        Err(Refusal::forbidden(
            "role-gate",
            "token introspection is for admins",
        ))
    }
}

/// Approving an app (SMART authorization): a person's session with a second factor.
pub fn app_approval(who: &Authenticated) -> Result<(), Refusal> {
    if who.session.is_some() && with_second_factor(who) {
        Ok(())
    } else {
        Err(Refusal::forbidden(
            "aal2-required",
            "approving an app needs a session signed in with a second factor",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller: `role`, a session (with `aal`, 0 for none) or not, an app's scopes or not,
    /// signed in at `at`.
    fn who(role: Role, session: bool, aal: u8, app: bool, at: Option<i64>) -> Authenticated {
        Authenticated {
            token_id: "usr_x".into(),
            role,
            session: session.then(|| "ses_x".into()),
            aal: (aal > 0)
                .then(|| Aal::from_level(i64::from(aal)).unwrap_or_else(|e| panic!("{e}"))),
            scopes: app.then(|| {
                std::sync::Arc::new(
                    medvault_auth::scopes::ScopeSet::parse("system/Patient.r")
                        .unwrap_or_else(|e| panic!("{e}")),
                )
            }),
            client: app.then(|| "cli_x".into()),
            auth_time_micros: at,
            issued_micros: at.unwrap_or(0),
            patient: None,
            practitioner: None,
        }
    }

    /// The role gate: which part of the FHIR API each kind of caller reaches at all.
    #[test]
    fn the_role_gate_admits_each_role_to_its_part_of_the_api() {
        let obs = Target::Type(medvault_core::ResourceType::from_static("Observation"));
        let audit = Target::Type(medvault_core::ResourceType::from_static("AuditEvent"));
        let rows: [(Role, bool, bool, &Target, bool); 9] = [
            (Role::Clinician, false, false, &obs, true),
            (Role::Clinician, false, true, &audit, false),
            (Role::Admin, false, true, &audit, true),
            (Role::Auditor, false, true, &audit, true),
            (Role::Auditor, false, false, &obs, false),
            (Role::PrivacyOfficer, false, true, &audit, true),
            (Role::Patient, false, false, &obs, false),
            (Role::Patient, true, false, &obs, true),
            (Role::Auditor, false, false, &Target::Metadata, true),
        ];
        for (role, scoped, audit_view, target, passes) in rows {
            let got = role_gate(role, scoped, audit_view, target);
            assert_eq!(got.is_ok(), passes, "{role:?} {target:?}");
            if let Err(r) = got {
                assert_eq!(r.rule, "role-gate");
                assert_eq!(r.into_error().kind, ErrorKind::Forbidden);
            }
        }
    }

    /// One row per rule: (case, decision, the rule it must name, or `None` for a pass).
    #[test]
    fn each_gate_decides_as_its_table_says() {
        let now = 1_000_000_000_000;
        let window = Duration::from_secs(300);
        let fresh = Some(now - 10_000_000);
        let stale = Some(now - 301_000_000);
        let clin = |session, aal, app, at| who(Role::Clinician, session, aal, app, at);
        let admin = |session, aal, app, at| who(Role::Admin, session, aal, app, at);
        // The callers several rows ask about.
        let clin_aal2 = clin(true, 2, false, fresh);
        let clin_token = clin(false, 0, false, None);
        let clin_app = clin(false, 0, true, None);
        let admin_aal1 = admin(true, 1, false, fresh);
        let admin_aal2 = admin(true, 2, false, fresh);
        let admin_token = admin(false, 0, false, None);
        let admin_stale = admin(true, 2, false, stale);
        let officer = |session, aal| who(Role::PrivacyOfficer, session, aal, false, fresh);
        // The admins' step-up gate, as the server's admin actions ask it.
        let admin_step_up = |w: &Authenticated| step_up(w, &[Role::Admin], "an admin", now, window);
        let rows: Vec<(&str, Result<(), Refusal>, Option<&str>)> = vec![
            (
                "AAL1 session",
                second_factor(&clin(true, 1, false, fresh)),
                Some("aal2-required"),
            ),
            ("AAL2 session", second_factor(&clin_aal2), None),
            (
                "AAL3 (passkey) session",
                second_factor(&clin(true, 3, false, fresh)),
                None,
            ),
            ("API token", second_factor(&clin_token), None),
            ("app token", second_factor(&clin_app), None),
            (
                "step-up, fresh AAL2 admin",
                admin_step_up(&admin_aal2),
                None,
            ),
            (
                "step-up, fresh AAL3 admin",
                admin_step_up(&admin(true, 3, false, fresh)),
                None,
            ),
            (
                "step-up, stale sign-in",
                admin_step_up(&admin_stale),
                Some("step-up"),
            ),
            (
                "step-up, API token",
                admin_step_up(&admin_token),
                Some("step-up"),
            ),
            ("step-up, AAL1", admin_step_up(&admin_aal1), Some("step-up")),
            (
                "step-up, wrong role",
                admin_step_up(&clin_aal2),
                Some("step-up"),
            ),
            ("share, clinician session", share(&clin_aal2), None),
            ("share, admin token", share(&admin_token), None),
            ("share, app", share(&clin_app), Some("share-gate")),
            (
                "share, researcher",
                share(&who(Role::Researcher, true, 2, false, fresh)),
                Some("share-gate"),
            ),
            (
                "alerts, privacy officer AAL2",
                privacy_officer(&officer(true, 2)),
                None,
            ),
            (
                "alerts, privacy officer token",
                privacy_officer(&officer(false, 0)),
                Some("role-gate"),
            ),
            (
                "alerts, admin",
                privacy_officer(&admin_aal2),
                Some("role-gate"),
            ),
            ("introspect, admin token", introspection(&admin_token), None),
            (
                "introspect, admin AAL1",
                introspection(&admin_aal1),
                Some("role-gate"),
            ),
            (
                "introspect, app",
                introspection(&admin(false, 0, true, None)),
                Some("role-gate"),
            ),
            ("approve app, AAL2 session", app_approval(&clin_aal2), None),
            (
                "approve app, API token",
                app_approval(&clin_token),
                Some("aal2-required"),
            ),
        ];
        let ran = rows.len();
        for (case, got, want) in rows {
            assert_eq!(got.err().map(|r| r.rule), want, "{case}");
        }
        assert_eq!(ran, 23);
        // Only a stale sign-in asks for a fresh one (401 + WWW-Authenticate); the rest are 403.
        let stale_refusal = admin_step_up(&admin_stale)
            .err()
            .unwrap_or_else(|| panic!("refused"));
        assert_eq!(stale_refusal.sign_in_within, Some(300));
        let e = stale_refusal.into_error();
        assert_eq!(e.kind, ErrorKind::Unauthenticated);
        assert_eq!(e.denied_by.as_deref(), Some("step-up"));
        let e = share(&clin_app)
            .err()
            .unwrap_or_else(|| panic!("refused"))
            .into_error();
        assert_eq!(e.kind, ErrorKind::Forbidden);
    }
}
