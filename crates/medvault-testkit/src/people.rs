//! Personas on a running server: accounts made with the CLI, TOTP enrolment, signing in with a
//! second factor, staff linked to a Practitioner, patients' own accounts, care teams.

use std::time::{SystemTime, UNIX_EPOCH};

use medvault_auth::totp::{TotpSecret, code_at};
use serde_json::{Value, json};

use crate::e2e::{CliOutput, Server};

/// The password every test account is created with.
pub const PASSWORD: &str = "violet staircase under the harbour";

/// A person signed in with a second factor.
#[derive(Debug, Clone)]
pub struct Person {
    /// The session token (AAL2).
    pub session: String,
    /// The Practitioner the account is linked to (clinicians and nurses).
    pub practitioner: Option<String>,
}

/// Seconds since the Unix epoch.
#[must_use]
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
}

/// The TOTP code of `secret` at the Unix time `at`.
#[must_use]
pub fn totp(secret: &TotpSecret, at: u64) -> String {
    code_at("SHA1", 6, 30, secret.as_bytes(), at).expect("a TOTP code")
}

/// The login body's second factor: the TOTP code of the next 30-second step (the clock-skew
/// allowance makes it valid now, and it is not yet spent by an enrolment or an earlier login).
#[must_use]
pub fn next_totp(secret: &TotpSecret) -> Value {
    json!({"totp": totp(secret, now() + 30)})
}

/// The `session` of a successful login's answer.
#[must_use]
pub fn session_of(answer: &Value) -> String {
    answer["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no session in {answer}"))
        .to_owned()
}

impl Server {
    /// `medvault user create` with the password `password` and `extra` arguments.
    pub fn try_create_user(
        &self,
        name: &str,
        role: &str,
        password: &str,
        extra: &[&str],
    ) -> CliOutput {
        let mut env = self.env_pairs();
        env.push(("MEDVAULT_NEW_PASSWORD", password));
        let dir = crate::e2e::path_str(&self.dir);
        let mut args = vec![
            "user",
            "create",
            "--data-dir",
            dir,
            "--username",
            name,
            "--role",
            role,
        ];
        args.extend_from_slice(extra);
        self.bin().cli(&args, &env)
    }

    /// Creates an account with [`PASSWORD`]; returns its id.
    pub fn create_user(&self, name: &str, role: &str) -> String {
        self.create_user_with(name, role, &[])
    }

    /// Creates an account with [`PASSWORD`] and `extra` arguments (e.g. `--patient ID`); returns
    /// its id.
    pub fn create_user_with(&self, name: &str, role: &str, extra: &[&str]) -> String {
        let (ok, out, err) = self.try_create_user(name, role, PASSWORD, extra);
        assert!(ok, "{err}");
        let id = out.trim().to_owned();
        assert!(id.starts_with("usr_"), "{id}");
        id
    }

    /// `POST /auth/login` with `name`, `password` and the fields of `extra` (a second factor).
    pub fn login(&self, name: &str, password: &str, extra: &Value) -> (u16, Value) {
        self.post_json("/auth/login", None, &login_body(name, password, extra))
    }

    /// Logs in with the password, enrolls TOTP and confirms it, checking each step; returns the
    /// secret and the recovery codes.
    pub fn enroll(&self, name: &str) -> (TotpSecret, Vec<String>) {
        let (st, b) = self.login(name, PASSWORD, &json!({}));
        assert_eq!(st, 200, "{b}");
        assert_eq!(b["aal"], 1, "no second factor yet: enrollment-only session");
        let session = session_of(&b);
        // An enrollment-only session reaches no data.
        let (st, b) = self.get_as("/fhir/Patient", &session, None);
        assert_eq!(st, 403, "{b}");
        // Admins, auditors and privacy officers enrol with a code from the host.
        let (ok, code, _) = self.run(&["user", "enrolment-code", name]);
        let enrolment = ok.then(|| code.trim().to_owned());
        let body = match &enrolment {
            Some(c) => json!({"enrolment_code": c}),
            None => json!({}),
        };
        let (st, b) = self.post_json("/auth/totp/enroll", Some(&session), &body);
        assert_eq!(st, 200, "{b}");
        let uri = b["otpauth_uri"].as_str().expect("an otpauth URI");
        assert!(
            uri.starts_with(&format!("otpauth://totp/medvault:{name}?")),
            "{uri}"
        );
        assert!(b["qr_svg"].as_str().expect("a QR code").contains("<svg"));
        let secret = TotpSecret::from_base32(b["secret"].as_str().expect("the secret"))
            .expect("a base32 secret");
        let (st, _) = self.post_json(
            "/auth/totp/confirm",
            Some(&session),
            &json!({"code": "000000", "enrolment_code": enrolment}),
        );
        assert_eq!(st, 400, "a wrong code does not activate the secret");
        let (st, b) = self.post_json(
            "/auth/totp/confirm",
            Some(&session),
            &json!({"code": totp(&secret, now()), "enrolment_code": enrolment}),
        );
        assert_eq!(st, 200, "{b}");
        let codes: Vec<String> = b["recovery_codes"]
            .as_array()
            .expect("recovery codes")
            .iter()
            .map(|c| c.as_str().expect("a recovery code").to_owned())
            .collect();
        assert_eq!(codes.len(), 10);
        // Confirming raised this session to AAL2.
        let (st, b) = self.get_as("/auth/session", &session, None);
        assert_eq!((st, &b["aal"]), (200, &json!(2)), "{b}");
        (secret, codes)
    }

    /// Signs `name` in with [`PASSWORD`] and the next TOTP code of `secret`; returns the session.
    pub fn sign_in(&self, name: &str, secret: &TotpSecret) -> String {
        let (st, b) = self.login(name, PASSWORD, &next_totp(secret));
        assert_eq!(st, 200, "{b}");
        session_of(&b)
    }

    /// Enrolls TOTP for the existing account `name` and signs in with it; the session.
    pub fn enroll_and_sign_in(&self, name: &str) -> String {
        let (secret, _) = self.enroll(name);
        self.sign_in(name, &secret)
    }

    /// Creates an account with `role` (clinicians and nurses get a Practitioner), enrolls TOTP
    /// and signs in.
    pub fn person(&self, name: &str, role: &str) -> Person {
        self.create_user(name, role);
        let practitioner =
            matches!(role, "clinician" | "nurse").then(|| self.make_practitioner(name));
        Person {
            session: self.enroll_and_sign_in(name),
            practitioner,
        }
    }

    /// A patient's own account for `patient_id`, signed in with a second factor; the session.
    pub fn patient_session(&self, name: &str, patient_id: &str) -> String {
        self.create_user_with(name, "patient", &["--patient", patient_id]);
        self.enroll_and_sign_in(name)
    }

    /// Gives the account `username` a Practitioner resource (created by the admin) and links
    /// them with `medvault user link`; returns the Practitioner's id.
    pub fn make_practitioner(&self, username: &str) -> String {
        let practitioner = self.create(&json!({
            "resourceType": "Practitioner",
            "name": [{"family": "Practitioner", "given": [username]}],
        }));
        let (ok, out, err) = self.run(&["user", "link", username, "--practitioner", &practitioner]);
        assert!(ok && out.contains("linked"), "{out} {err}");
        practitioner
    }

    /// Puts `practitioner` on an active CareTeam of `patient` (created by the admin); returns the
    /// CareTeam's id.
    pub fn care_team(&self, practitioner: &str, patient: &str) -> String {
        self.create(&json!({
            "resourceType": "CareTeam",
            "status": "active",
            "subject": {"reference": format!("Patient/{patient}")},
            "participant": [{"member": {"reference": format!("Practitioner/{practitioner}")}}],
        }))
    }
}

/// A login request's body: `name`, `password` and the fields of `extra`.
#[must_use]
pub fn login_body(name: &str, password: &str, extra: &Value) -> Value {
    let mut body = json!({"username": name, "password": password});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}
