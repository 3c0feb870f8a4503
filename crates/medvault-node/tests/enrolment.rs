//! A privileged account's first second factor needs a one-time code from the host: it expires,
//! enrols only its own account, and is spent by the enrolment it allowed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use medvault_auth::password::Password;
use medvault_core::{Aal, Role};
use medvault_node::clock::Clock;
use medvault_node::identity::Authenticated;
use medvault_node::identity::accounts::{FhirUser, create_user, find_user};
use medvault_node::identity::login::{issue_enrolment_code, totp_enroll};

struct Fixed(AtomicI64);

impl Clock for Fixed {
    fn now_micros(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

const HOUR: i64 = 3_600_000_000;

fn session_of(user: &str, role: Role) -> Authenticated {
    Authenticated {
        token_id: user.to_owned(),
        role,
        session: Some("ses_test".into()),
        aal: Some(Aal::One),
        scopes: None,
        client: None,
        auth_time_micros: None,
        issued_micros: 0,
        patient: None,
        practitioner: None,
    }
}

#[test]
fn an_enrolment_code_expires_and_enrols_only_its_account() {
    let (_tmp, mut node) = medvault_testkit::scratch_node();
    let clock = Arc::new(Fixed(AtomicI64::new(1_800_000_000 * 1_000_000)));
    node.clock = clock.clone();
    let password = Password::new("a long test password 1");
    let admin = create_user(&node, "x.admin", Role::Admin, FhirUser::None, &password).unwrap();
    let auditor =
        create_user(&node, "x.auditor", Role::Auditor, FhirUser::None, &password).unwrap();
    let row = find_user(&node, "x.admin").unwrap().unwrap();
    let (code, expires) = issue_enrolment_code(&node, &row, 1).unwrap();
    assert_eq!(expires, clock.now_micros() + HOUR);
    let as_admin = session_of(&admin, Role::Admin);
    // Another account's code, or none, does not enrol.
    assert_eq!(
        totp_enroll(&node, &session_of(&auditor, Role::Auditor), Some(&code))
            .unwrap_err()
            .status()
            .as_u16(),
        403
    );
    assert_eq!(
        totp_enroll(&node, &as_admin, None)
            .unwrap_err()
            .status()
            .as_u16(),
        403
    );
    // Past its hour, the code is refused.
    clock.0.fetch_add(HOUR + 1, Ordering::SeqCst);
    let late = totp_enroll(&node, &as_admin, Some(&code)).unwrap_err();
    assert_eq!(late.status().as_u16(), 403);
    // The same answer as for a wrong code: a password holder learns nothing of the code.
    let wrong = totp_enroll(&node, &as_admin, Some("ZZZZ-ZZZZ-ZZZZ-ZZZZ")).unwrap_err();
    assert_eq!(late.message, wrong.message);
    assert!(
        late.message.contains("a valid enrolment code"),
        "{}",
        late.message
    );
    // A new code replaces it and enrols.
    let (code2, _) = issue_enrolment_code(&node, &row, 1).unwrap();
    assert!(
        totp_enroll(&node, &as_admin, Some(&code)).is_err(),
        "the old code is gone"
    );
    assert!(totp_enroll(&node, &as_admin, Some(&code2)).is_ok());
}
