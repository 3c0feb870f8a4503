use crate::MEDVAULT;

#[test]
fn every_command_has_help_that_teaches() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["token", "--help"],
        vec!["token", "create", "--help"],
        vec!["keys", "--help"],
        vec!["keys", "rotate", "--help"],
        vec!["patient", "--help"],
        vec!["patient", "erase", "--help"],
        vec!["backup", "--help"],
        vec!["restore", "--help"],
        vec!["migrate", "--help"],
        vec!["sentinel", "--help"],
        vec!["sentinel", "replay", "--help"],
    ] {
        let (ok, out, _) = MEDVAULT.cli(&args, &[]);
        assert!(ok, "{args:?}");
        assert!(out.contains("Usage:"), "{args:?}: {out}");
        if args.len() > 2 || args[0] == "serve" {
            // Every command but the offline ones works on a node's data directory.
            let offline = args[0] == "sentinel";
            assert!(
                out.contains("Example") && (offline || out.contains("--data-dir")),
                "{args:?}: {out}"
            );
        }
    }
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let (ok, _, err) = MEDVAULT.cli(&["token", "create", "--role", "superuser"], &[]);
    assert!(!ok);
    assert!(err.contains("superuser"));
    let (ok, _, err) = MEDVAULT.cli(&["serve", "--listen", "not-an-address"], &[]);
    assert!(!ok);
    assert!(err.contains("--listen"));
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, err) = MEDVAULT.cli(
        &[
            "patient",
            "erase",
            "--data-dir",
            tmp.path().to_str().unwrap(),
            "bad id!",
        ],
        &[],
    );
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("medvault: error:"));
}
