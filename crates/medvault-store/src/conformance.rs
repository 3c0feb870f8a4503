//! The store conformance suite: every backend runs these checks (SQLite always, PostgreSQL when
//! its test database is configured). Each check panics with a message naming what broke.

use medvault_core::{Aal, KeyName, ResourceId, ResourceType};
use medvault_crypto::{BlindValue, Sealed, WrappedKey};

use crate::{
    AccessTokenRow, AlertQuery, AlertRow, Amendment, AmendmentKind, AuditDetail, BreakGlassRow,
    ClientRow, GrantRow, IndexQuery, LedgerNodes, PeerRow, RegisterRow, ResponseRow, SessionRow,
    SortOrder, Store, StoreError, StoredVersion, TokenHash, TokenRow, UserRow, write_with,
};

/// One conformance check: panics when the backend breaks the contract.
pub type Check = fn(&dyn Store);

/// Every conformance check, by name, for backends' test harnesses.
pub const CHECKS: &[(&str, Check)] = &[
    ("meta_round_trip", meta_round_trip),
    ("keks_are_versioned", keks_are_versioned),
    ("versions_and_history", versions_and_history),
    ("failed_op_leaves_nothing", failed_op_leaves_nothing),
    ("search_semantics", search_semantics),
    ("scan_walks_in_creation_order", scan_walks_in_creation_order),
    ("destroy_shreds_compartment", destroy_shreds_compartment),
    ("tokens_by_hash", tokens_by_hash),
    (
        "tokens_expire_revoke_and_record_use",
        tokens_expire_revoke_and_record_use,
    ),
    (
        "ledger_leaves_commit_with_their_records",
        ledger_leaves_commit_with_their_records,
    ),
    (
        "users_sessions_and_recovery_codes",
        users_sessions_and_recovery_codes,
    ),
    (
        "oauth_clients_tokens_and_replay",
        oauth_clients_tokens_and_replay,
    ),
    ("break_glass_and_alerts", break_glass_and_alerts),
    (
        "peers_register_replace_remove",
        peers_register_replace_remove,
    ),
    (
        "amended_versions_keep_what_they_were",
        amended_versions_keep_what_they_were,
    ),
    (
        "queued_ops_share_a_commit_and_fail_alone",
        queued_ops_share_a_commit_and_fail_alone,
    ),
    (
        "tree_levels_between_tiles_are_hashed_up",
        tree_levels_between_tiles_are_hashed_up,
    ),
    ("compliance_register", compliance_register),
];

/// Checks that need two fresh stores of the backend (a source and a target).
pub type PairCheck = fn(&dyn Store, &dyn Store);

/// Every two-store check, by name.
pub const PAIR_CHECKS: &[(&str, PairCheck)] =
    &[("dump_and_load_round_trip", dump_and_load_round_trip)];

/// Runs every check against fresh stores from `make`; returns how many ran.
pub fn run_all(make: &dyn Fn() -> Box<dyn Store>) -> usize {
    for (name, check) in CHECKS {
        let store = make();
        eprintln!("store conformance: {name}");
        check(store.as_ref());
    }
    for (name, check) in PAIR_CHECKS {
        let (a, b) = (make(), make());
        eprintln!("store conformance: {name}");
        check(a.as_ref(), b.as_ref());
    }
    CHECKS.len() + PAIR_CHECKS.len()
}

/// The access log's patient index, on a fresh access-log database from `open`: rows added for
/// leaves in the log (a repeated row once, in any order, across runs), read newest first within
/// a range and by leaf range, rolled back with a failed op, and dumped. Returns how many leaves
/// it wrote.
pub fn access_patient_index(open: &dyn Fn() -> Box<dyn crate::LogStore>) -> u64 {
    let store = open();
    let log = store.as_ref();
    let (a, b, c) = (
        BlindValue([1; 16]),
        BlindValue([2; 16]),
        BlindValue([3; 16]),
    );
    assert_eq!(
        index_marks(log),
        [Some("0".to_owned()), Some("0".to_owned())],
        "a new access log is indexed from its first leaf, and up to it"
    );
    // Two runs and a bit: the leaves of the rows below.
    let run = crate::ACCESS_RUN_LEAVES;
    let leaves_written = 2 * run + 2;
    ok(
        crate::write_log_with(log, move |tx| {
            let detail = AuditDetail {
                salt: [9; 16],
                sealed: Sealed::from_stored(vec![9; 40]),
            };
            for _ in 0..leaves_written {
                tx.append_audit(&detail, b"leaf")?;
            }
            Ok(())
        }),
        "append_audit",
    );
    let add = |rows: Vec<(u64, BlindValue)>| {
        ok(
            crate::write_log_with(log, move |tx| tx.add_access_tags(&rows)),
            "add_access_tags",
        );
    };
    // Out of order, a row twice: stored once, in order.
    add(vec![(3, a), (0, b), (0, a), (1, a), (3, a)]);
    add(vec![(run + 1, a), (2 * run + 1, a), (2 * run, c), (run, b)]);
    let leaves = |t: &BlindValue, range, count| ok(log.access_leaves(t, range, count), "leaves");
    let end = leaves_written;
    assert_eq!(
        leaves(&a, (0, end), 10),
        vec![2 * run + 1, run + 1, 3, 1, 0],
        "newest first, across runs"
    );
    assert_eq!(
        leaves(&a, (0, 3), 1),
        vec![1],
        "below the bound, at most count"
    );
    assert_eq!(leaves(&a, (1, run + 1), 10), vec![3, 1], "within the range");
    assert_eq!(leaves(&a, (run + 2, end), 10), vec![2 * run + 1]);
    assert_eq!(leaves(&a, (5, 5), 10), Vec::<u64>::new(), "an empty range");
    assert_eq!(leaves(&b, (0, end), 10), vec![run, 0]);
    assert!(leaves(&BlindValue([4; 16]), (0, end), 10).is_empty());
    let tags = |start, count| ok(log.access_tags(start, count), "tags");
    assert_eq!(tags(0, 10), vec![(0, a), (0, b), (1, a), (3, a)]);
    assert_eq!(tags(1, 2), vec![(1, a)], "by leaf range");
    assert_eq!(
        tags(run - 1, run + 2),
        vec![(run, b), (run + 1, a), (2 * run, c)],
        "a range across runs"
    );
    // Rows already there are kept.
    add(vec![(2, c), (0, a)]);
    assert_eq!(tags(0, 10), vec![(0, a), (0, b), (1, a), (2, c), (3, a)]);
    // A failed op leaves no rows behind.
    let failed = crate::write_log_with(log, move |tx| {
        tx.add_access_tags(&[(1, c), (4, c)])?;
        Err::<(), _>(StoreError::Conflict)
    });
    assert!(failed.is_err());
    assert_eq!(
        leaves(&c, (0, 10), 10),
        vec![2],
        "the failed op's rows are gone"
    );
    assert_eq!(ok(log.ledger_size(), "size"), leaves_written);
    assert_eq!(
        ok(log.access_tags_astray(leaves_written), "astray"),
        (0, None)
    );
    assert_eq!(
        ok(log.access_tags_astray(run + 1), "astray").0,
        3,
        "rows past a log's end are astray"
    );
    let mut dumped = Vec::new();
    ok(
        log.dump(crate::dump::LOG_TABLES, &mut |t, r| {
            if t.name == "access_patients" {
                dumped.push(r);
            }
            Ok(())
        }),
        "dump",
    );
    assert_eq!(dumped.len(), 9, "every index row is dumped");
    assert_eq!(
        dumped[0],
        vec![
            crate::dump::Cell::Bytes(vec![1; 16]),
            crate::dump::Cell::Int(0)
        ]
    );
    leaves_written
}

/// The patient index's two marks as `log`'s meta holds them: where its complete part starts
/// and where it ends.
pub fn index_marks(log: &dyn crate::LogRead) -> [Option<String>; 2] {
    [crate::ACCESS_INDEXED_FROM, crate::ACCESS_INDEXED_TO].map(|k| ok(log.meta(k), "meta"))
}

/// Every row of `tables` in `store`, by table.
pub fn dump_all(
    store: &dyn Store,
    tables: &'static [crate::dump::Table],
) -> Vec<(&'static str, Vec<crate::dump::Cell>)> {
    let mut rows = Vec::new();
    ok(
        store.dump(tables, &mut |t, r| {
            rows.push((t.name, r));
            Ok(())
        }),
        "dump",
    );
    rows
}

/// A bulk load's staged index entries ([`crate::RecordTx::stage_new_index_entries`]): where
/// the backend stages, a new resource is not found by search until the merge, is found after
/// it, and an existing resource's entries are written as usual; entries a load left staged are
/// merged when the database is opened again. A backend that does not stage finds everything
/// at once. `open` opens the same database each time.
pub fn staged_index_entries_become_searchable(open: &dyn Fn() -> Box<dyn Store>) {
    let found = |store: &dyn Store, n: u8| {
        let q = IndexQuery {
            clauses: vec![vec![entry("family", n)]],
            limit: 10,
            ..IndexQuery::new(ty("Patient"))
        };
        ok(store.search(&q), "search").total
    };
    let staged_put = |store: &dyn Store, id: &str, v: u64, n: u8| {
        let v = version("Patient", id, v, 1, &format!("Patient/{id}"), Some(b"s"));
        written(store, "staged put", move |tx| {
            let staged = tx.stage_new_index_entries(&["Observation"]);
            tx.put_version(&v, &[entry("family", n)], &leaf_for(&v))?;
            Ok(staged)
        })
    };
    let store = open();
    // A type the caller excepts is indexed at once.
    let v = version("Observation", "o1", 1, 1, "Patient/s1", Some(b"o"));
    written(store.as_ref(), "excepted put", move |tx| {
        tx.stage_new_index_entries(&["Observation"]);
        tx.put_version(&v, &[entry("code", 45)], &leaf_for(&v))
    });
    let q = IndexQuery {
        clauses: vec![vec![entry("code", 45)]],
        limit: 10,
        ..IndexQuery::new(ty("Observation"))
    };
    assert_eq!(
        ok(store.search(&q), "search").total,
        1,
        "excepted types are not staged"
    );
    let stages = staged_put(store.as_ref(), "s1", 1, 41);
    assert_eq!(found(store.as_ref(), 41), u64::from(!stages));
    // An existing resource's new version is indexed at once, staging or not, and its staged
    // entries go with the version they belonged to.
    staged_put(store.as_ref(), "s1", 2, 43);
    assert_eq!(found(store.as_ref(), 43), 1);
    staged_put(store.as_ref(), "s3", 1, 44);
    let merged = written(store.as_ref(), "merge", |tx| tx.merge_staged_index());
    assert_eq!(
        merged,
        u64::from(stages),
        "only s3's entry was still staged"
    );
    assert_eq!(found(store.as_ref(), 44), 1, "merged entries are found");
    assert_eq!(found(store.as_ref(), 41), 0, "replaced entries are not");
    // A load that stopped before its merge: the next open merges.
    staged_put(store.as_ref(), "s2", 1, 42);
    drop(store);
    let store = open();
    assert_eq!(found(store.as_ref(), 42), 1, "merged when opened");
    assert_eq!(
        written(store.as_ref(), "merge", |tx| tx.merge_staged_index()),
        0
    );
}

/// Opens a store with `open`, gives it a tenant and five audit leaves, drops it and opens it
/// again: the data and the schema version are there, and the writer resumes the tree where it
/// stopped. Returns the reopened store, for the backend's own checks.
pub fn reopen_keeps_data(open: &dyn Fn() -> Box<dyn Store>) -> Box<dyn Store> {
    let audit = |store: &dyn Store, n: u8| {
        let detail = AuditDetail {
            salt: [n; 16],
            sealed: Sealed::from_stored(vec![n; 40]),
        };
        wrote(store, "append_audit", move |tx| {
            tx.append_audit(&detail, &[n]).map(|_| ())
        });
    };
    {
        let store = open();
        wrote(store.as_ref(), "set_meta", |tx| tx.set_meta("tenant", "t"));
        for n in 0..5 {
            audit(store.as_ref(), n);
        }
    }
    let store = open();
    assert_eq!(ok(store.meta("tenant"), "meta").as_deref(), Some("t"));
    assert_eq!(
        ok(store.meta("schema_version"), "meta"),
        Some(crate::NODE_SCHEMA_VERSION.to_string())
    );
    // The writer resumes the tree where it stopped.
    audit(store.as_ref(), 5);
    let mut want = medvault_ledger::MemoryTree::new();
    for n in 0..6u8 {
        want.push(medvault_ledger::leaf_hash(&[n]));
    }
    let got = medvault_ledger::root(&LedgerNodes(store.as_ref()), 6)
        .unwrap_or_else(|e| panic!("root: {e}"));
    assert_eq!(got, want.root());
    store
}

/// 700 audit leaves, appended in groups of different sizes: only the tile levels are stored,
/// yet every level answers as the whole tree would (runs, batches of keys, the root and the
/// frontier, across a group boundary and at the tree's ragged end).
fn tree_levels_between_tiles_are_hashed_up(store: &dyn Store) {
    let mut want = medvault_ledger::MemoryTree::new();
    let mut n: u32 = 0;
    for group in [1u32, 255, 1, 300, 143] {
        let leaves: Vec<Vec<u8>> = (n..n + group).map(|i| i.to_be_bytes().to_vec()).collect();
        for l in &leaves {
            want.push(medvault_ledger::leaf_hash(l));
        }
        n += group;
        wrote(store, "append_audit", move |tx| {
            for l in &leaves {
                let detail = AuditDetail {
                    salt: [7; 16],
                    sealed: Sealed::from_stored(vec![7; 40]),
                };
                tx.append_audit(&detail, l)?;
            }
            Ok(())
        });
    }
    assert_eq!(ok(store.ledger_size(), "size"), 700);
    let src: &dyn medvault_ledger::NodeSource = &want;
    for level in 0..=10u8 {
        let complete = 700u64 >> level;
        let expect: Vec<_> = (0..complete)
            .map(|i| {
                src.node(level, i)
                    .unwrap_or_else(|e| panic!("reference: {e}"))
            })
            .collect();
        assert_eq!(
            ok(store.ledger_nodes(level, 0, complete + 5), "nodes"),
            expect,
            "level {level}"
        );
        if complete > 1 {
            // A run that starts inside the level.
            assert_eq!(
                ok(store.ledger_nodes(level, 1, complete), "nodes"),
                expect[1..],
                "level {level} from 1"
            );
        }
    }
    let keys = [
        (0u8, 699u64),
        (3, 80),
        (7, 4),
        (7, 5),
        (8, 1),
        (9, 0),
        (9, 1),
        (1, 349),
    ];
    let got = ok(store.ledger_nodes_at(&keys), "nodes at");
    for ((level, index), hash) in keys.iter().zip(got) {
        let expect = src.node(*level, *index).ok();
        let complete = 700u64 >> level;
        assert_eq!(
            hash,
            (*index < complete).then_some(expect).flatten(),
            "node {level}/{index}"
        );
    }
    for size in [1, 255, 256, 257, 511, 512, 700] {
        let mut prefix = medvault_ledger::MemoryTree::new();
        for i in 0..size as u32 {
            prefix.push(medvault_ledger::leaf_hash(&i.to_be_bytes()));
        }
        assert_eq!(
            medvault_ledger::root(&LedgerNodes(store), size).ok(),
            Some(prefix.root()),
            "root at {size}"
        );
        let batched = LedgerNodes(store).batched(|s| medvault_ledger::root(s, size));
        assert_eq!(batched.ok(), Some(prefix.root()), "batched root at {size}");
    }
    let proof = LedgerNodes(store)
        .batched(|s| medvault_ledger::inclusion_proof(s, 300, 700))
        .unwrap_or_else(|e| panic!("proof: {e}"));
    assert!(
        medvault_ledger::verify_inclusion(
            300,
            700,
            &medvault_ledger::leaf_hash(&300u32.to_be_bytes()),
            &proof,
            &want.root()
        )
        .is_ok()
    );
}

/// After `store` was migrated from schema version 12 (tokens without expiry, revocation or
/// last use) holding an API token whose hash is `[1; 32]`: that token now expires 30 days
/// after the upgrade, unrevoked and unused.
pub fn token_from_v12_expires_in_30_days(store: &dyn Store) {
    assert_eq!(
        ok(store.meta("schema_version"), "meta"),
        Some(crate::NODE_SCHEMA_VERSION.to_string())
    );
    let t = ok(store.token(&TokenHash::from_bytes([1; 32])), "token")
        .unwrap_or_else(|| panic!("the token of version 12 is gone"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_else(|e| panic!("clock: {e}"))
        .as_secs();
    let in_30_days = i64::try_from(now + 30 * 86_400).unwrap_or_else(|e| panic!("clock: {e}"));
    let in_30_days = in_30_days * 1_000_000;
    assert!(
        (t.expires_micros - in_30_days).abs() < 3_600_000_000,
        "{t:?}"
    );
    assert_eq!((t.revoked_micros, t.last_used_micros), (None, None));
}

/// A data-key name written in a test.
fn kn(name: &str) -> KeyName {
    KeyName::parse(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Fills a store with one of everything: versions (indexed, deleted, shredded), keys, people,
/// sessions, clients, grants, passkeys, break-glass grants, alerts, audit leaves, checkpoints.
fn populate(store: &dyn Store) {
    written(store, "keys", |tx| {
        tx.set_meta("tenant", "t-dump")?;
        tx.add_kek(1, &WrappedKey::from_stored(vec![1; 40]))?;
        tx.put_data_key(
            &kn("Patient/p1"),
            1,
            1,
            &WrappedKey::from_stored(vec![2; 60]),
        )?;
        tx.put_data_key(
            &kn("Patient/p2"),
            1,
            1,
            &WrappedKey::from_stored(vec![3; 60]),
        )?;
        tx.put_data_key(&kn("@tenant"), 1, 1, &WrappedKey::from_stored(vec![4; 60]))?;
        tx.put_peer(&peer_row("node-b", "https://b.example:7443"))?;
        tx.put_share_receipt("node-b", "bundle-1", "{}", i64::MAX, 0)
    });
    let versions = [
        version("Patient", "p1", 1, 10, "Patient/p1", Some(b"sealed p1 v1")),
        version("Patient", "p1", 2, 20, "Patient/p1", Some(b"sealed p1 v2")),
        version("Patient", "p2", 1, 30, "Patient/p2", Some(b"sealed p2")),
        version("Observation", "o1", 1, 40, "Patient/p1", Some(b"sealed o1")),
        version("Observation", "o1", 2, 50, "Patient/p1", None),
        version("Organization", "g1", 1, 60, "@tenant", Some(b"sealed org")),
    ];
    put_all(
        store,
        versions.map(|v| {
            let index = vec![entry(&v.resource_type, 1), entry(&v.id, 2)];
            (v, index)
        }),
    );
    let p1v1 = ok(store.version(&ty("Patient"), &rid("p1"), Some(1)), "p1 v1");
    if let Some(row) = p1v1 {
        let (before, now) = amendment_of(&row, AmendmentKind::Expunge, None, "Patient/p1");
        written(store, "amend", move |tx| {
            tx.amend_version(&before, &now, b"leaf expunged p1 v1")
        });
    }
    written(store, "shred", |tx| tx.destroy_data_key(&kn("Patient/p2")));
    // Every optional column holds a value somewhere, every flag is set somewhere.
    let mut user = user_row("usr_a", 7);
    user.patient_id = Some("p1".into());
    user.totp_last_step = Some(12);
    let session = session_row(5);
    let client = ClientRow {
        disabled: true,
        ..client_row("cli_1")
    };
    let grant = GrantRow {
        used: true,
        ..grant_row(6)
    };
    let token = access_token_row(7, i64::MAX);
    let bg = break_glass_row("bg_d", "p1", 1, 2);
    let alert = AlertRow {
        acknowledged_by: Some("usr_x".into()),
        acknowledged_micros: Some(3),
        ..alert_row("alr_d", 1)
    };
    written(store, "people and ledger", move |tx| {
        tx.put_user(&user)?;
        tx.put_session(&session)?;
        tx.set_recovery_codes("usr_a", &[TokenHash([1; 32]), TokenHash([2; 32])])?;
        tx.put_client(&client)?;
        tx.put_grant(&grant)?;
        tx.put_access_token(&token, 0)?;
        tx.use_assertion_id("cli_1", "jti-1", i64::MAX, 0)?;
        tx.put_passkey("usr_a", &[4, 4], &Sealed::from_stored(vec![4; 40]), 1)?;
        tx.add_token(
            &TokenHash([8; 32]),
            &TokenRow {
                role: "admin".into(),
                token_id: "tok_d".into(),
                created_micros: 1,
                expires_micros: 2,
                revoked_micros: Some(3),
                last_used_micros: Some(4),
            },
        )?;
        tx.put_break_glass(&bg)?;
        tx.put_alert(&alert)?;
        let detail = AuditDetail {
            salt: [3; 16],
            sealed: Sealed::from_stored(vec![3; 40]),
        };
        tx.append_audit(&detail, b"audit leaf")?;
        tx.put_checkpoint(3, "checkpoint note\n")?;
        tx.set_witnessed("other.example/log", 9, &[1; 32], "witnessed note\n")
    });
}

fn dump_and_load_round_trip(source: &dyn Store, target: &dyn Store) {
    use crate::dump::{Cell, NODE_TABLES};
    populate(source);
    let rows = dump_all(source, NODE_TABLES);
    let count = |name: &str| rows.iter().filter(|(t, _)| *t == name).count();
    assert_eq!(count("versions"), 6, "{rows:?}");
    assert_eq!(count("current"), 4);
    assert_eq!(
        count("idx"),
        6,
        "the shredded patient's index entries are gone"
    );
    assert_eq!(count("amendments"), 1);
    assert_eq!(
        count("ledger_leaves"),
        8,
        "six versions, an amendment and an audit leaf"
    );
    // Loaded in several writes, a table's rows in batches, as restore does.
    for table in NODE_TABLES {
        let mine: Vec<Vec<Cell>> = rows
            .iter()
            .filter(|(t, _)| *t == table.name)
            .map(|(_, r)| r.clone())
            .collect();
        for batch in mine.chunks(4) {
            let batch = batch.to_vec();
            written(target, table.name, move |tx| tx.load(table, &batch));
        }
    }
    assert_eq!(
        dump_all(target, NODE_TABLES),
        rows,
        "the target dumps the same rows"
    );
    // The target works as a store: reads, search by index, the ledger tree.
    assert_eq!(
        ok(target.version(&ty("Patient"), &rid("p1"), None), "read"),
        ok(source.version(&ty("Patient"), &rid("p1"), None), "read")
    );
    let q = IndexQuery {
        clauses: vec![vec![entry("p1", 2)]],
        limit: 10,
        ..IndexQuery::new(ty("Patient"))
    };
    let found = ok(target.search(&q), "search");
    assert_eq!(found.total, 1);
    assert_eq!(found.rows[0].id, "p1");
    assert!(
        ok(target.version(&ty("Patient"), &rid("p2"), None), "shredded")
            .is_some_and(|v| v.shredded)
    );
    let size = ok(target.ledger_size(), "size");
    assert_eq!(size, 8);
    let root = |s: &dyn Store| {
        crate::LedgerNodes(s)
            .batched(|n| medvault_ledger::root(n, size))
            .unwrap_or_else(|e| panic!("root: {e}"))
    };
    assert_eq!(
        root(target),
        root(source),
        "the loaded leaves were hashed into the tree"
    );
    // An update of a loaded resource replaces its loaded index entries.
    put_all(
        target,
        [(
            version("Patient", "p1", 3, 70, "Patient/p1", Some(b"v3")),
            vec![entry("p1", 3)],
        )],
    );
    assert_eq!(
        ok(target.search(&q), "search").total,
        0,
        "old index entry removed"
    );
    // Rows that do not fit the table are refused, and nothing of the batch stays.
    let bad = vec![vec![Cell::Text("k".into()), Cell::Int(1)]];
    let refused = write_with(target, move |tx| tx.load(&NODE_TABLES[0], &bad));
    assert!(refused.is_err(), "a number where text belongs");
    let twice = rows
        .iter()
        .filter(|(t, _)| *t == "users")
        .map(|(_, r)| r.clone())
        .collect::<Vec<_>>();
    let users = NODE_TABLES
        .iter()
        .find(|t| t.name == "users")
        .unwrap_or_else(|| panic!("users table"));
    assert!(
        matches!(
            write_with(target, move |tx| tx.load(users, &twice)),
            Err(StoreError::Conflict)
        ),
        "loading a row that exists conflicts"
    );
}

fn ok<T>(r: Result<T, StoreError>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

/// What `op` produced, run through [`write_with`] (the backend's `submit`); panics naming `what`
/// when it failed.
fn written<T: Send + 'static>(
    store: &dyn Store,
    what: &str,
    op: impl FnOnce(&mut dyn crate::StoreTx) -> Result<T, StoreError> + Send + 'static,
) -> T {
    ok(write_with(store, op), what)
}

/// Runs `op` through the backend's own [`Store::write`]; panics naming `what` when it failed.
fn wrote(
    store: &dyn Store,
    what: &str,
    op: impl FnOnce(&mut dyn crate::StoreTx) -> Result<(), StoreError> + Send + 'static,
) {
    ok(store.write(Box::new(op)), what);
}

/// A type name of the checks.
fn ty(name: &'static str) -> ResourceType {
    ResourceType::from_static(name)
}

/// An id of the checks.
fn rid(text: &str) -> ResourceId {
    ResourceId::new(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn version(rt: &str, id: &str, v: u64, at: i64, key: &str, body: Option<&[u8]>) -> StoredVersion {
    StoredVersion {
        resource_type: rt.into(),
        id: id.into(),
        version: v,
        last_updated_micros: at,
        key_name: key.into(),
        key_version: 1,
        body: body.map(|b| Sealed::from_stored(b.to_vec())),
        shredded: false,
        salt: Some([u8::try_from(v % 256).unwrap_or(0); 16]),
        leaf: None,
        expunged: false,
    }
}

fn leaf_for(v: &StoredVersion) -> Vec<u8> {
    format!("leaf {}/{}/{}", v.resource_type, v.id, v.version).into_bytes()
}

fn put(store: &dyn Store, v: StoredVersion, index: Vec<BlindValue>) -> Result<(), StoreError> {
    store.write(Box::new(move |tx| {
        tx.put_version(&v, &index, &leaf_for(&v)).map(|_| ())
    }))
}

/// Stores each version with its index values, one write each, in order; panics naming the
/// version that failed.
fn put_all(
    store: &dyn Store,
    versions: impl IntoIterator<Item = (StoredVersion, Vec<BlindValue>)>,
) {
    for (v, index) in versions {
        let what = format!("put {}/{} v{}", v.resource_type, v.id, v.version);
        ok(put(store, v, index), &what);
    }
}

/// Index values of distinct parameters are distinct blind values in practice; the tests give
/// each (parameter, n) its own byte pattern.
fn entry(param: &str, n: u8) -> BlindValue {
    let mut v = [n; 16];
    v[0] = param
        .bytes()
        .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    BlindValue(v)
}

fn meta_round_trip(store: &dyn Store) {
    assert_eq!(ok(store.meta("tenant"), "meta"), None);
    wrote(store, "set_meta", |tx| tx.set_meta("tenant", "t1"));
    wrote(store, "set_meta again", |tx| tx.set_meta("tenant", "t2"));
    assert_eq!(ok(store.meta("tenant"), "meta"), Some("t2".into()));
}

fn keks_are_versioned(store: &dyn Store) {
    let w1 = WrappedKey::from_stored(vec![1, 2, 3]);
    let w2 = WrappedKey::from_stored(vec![4, 5, 6]);
    let (a, b) = (w1.clone(), w2.clone());
    wrote(store, "add keks", move |tx| {
        tx.add_kek(1, &a)?;
        tx.add_kek(2, &b)
    });
    let dup = w1.clone();
    let err = store.write(Box::new(move |tx| tx.add_kek(2, &dup)));
    assert!(
        matches!(err, Err(StoreError::Conflict)),
        "duplicate KEK version must conflict: {err:?}"
    );
    assert_eq!(ok(store.keks(), "keks"), vec![(1, w1), (2, w2)]);
    let wk = WrappedKey::from_stored(vec![9; 60]);
    let wk2 = wk.clone();
    wrote(store, "put dek", move |tx| {
        tx.put_data_key(&kn("Patient/a"), 1, 2, &wk2)
    });
    let row = ok(store.data_key(&kn("Patient/a")), "dek").unwrap_or_else(|| panic!("dek missing"));
    assert_eq!(
        (row.key_version, row.kek_version, row.wrapped),
        (1, Some(2), Some(wk))
    );
    assert_eq!(ok(store.data_key_names(), "names"), vec![kn("Patient/a")]);
}

/// What amending `row` to `body` under `key` records: (the amendment, the new state).
fn amendment_of(
    row: &StoredVersion,
    kind: AmendmentKind,
    body: Option<&[u8]>,
    key: &str,
) -> (Amendment, StoredVersion) {
    let before = Amendment::of(row, kind, 999).unwrap_or_else(|| panic!("no leaf"));
    let now = StoredVersion {
        key_name: key.into(),
        body: body.map(|b| Sealed::from_stored(b.to_vec())),
        salt: Some([9; 16]),
        leaf: None,
        expunged: kind == AmendmentKind::Expunge,
        ..row.clone()
    };
    (before, now)
}

fn amended_versions_keep_what_they_were(store: &dyn Store) {
    put_all(
        store,
        [1, 2].map(|v| {
            let body = format!("a v{v}");
            let at = 100 * i64::try_from(v).unwrap_or(0);
            let row = version(
                "Observation",
                "a",
                v,
                at,
                "Patient/x",
                Some(body.as_bytes()),
            );
            (row, vec![entry("a", 1)])
        }),
    );
    let v1 = ok(store.version(&ty("Observation"), &rid("a"), Some(1)), "v1")
        .unwrap_or_else(|| panic!("no v1"));
    let size = ok(store.ledger_size(), "size");
    // Re-sealed under another compartment's key: the row holds the new state and a new leaf.
    let (before, now) = amendment_of(&v1, AmendmentKind::Reseal, Some(b"resealed"), "Patient/y");
    let leaf = written(store, "reseal", move |tx| {
        tx.amend_version(&before, &now, b"leaf reseal")
    });
    assert_eq!(leaf, size);
    let got = ok(store.version(&ty("Observation"), &rid("a"), Some(1)), "v1")
        .unwrap_or_else(|| panic!("no v1"));
    assert_eq!(
        (
            got.key_name.as_str(),
            got.body.as_ref().map(Sealed::as_bytes),
            got.leaf,
            got.salt,
            got.expunged
        ),
        (
            "Patient/y",
            Some(&b"resealed"[..]),
            Some(size),
            Some([9; 16]),
            false
        )
    );
    assert_eq!(got.last_updated_micros, v1.last_updated_micros);
    let cur = ok(store.current(&ty("Observation"), &rid("a")), "current")
        .unwrap_or_else(|| panic!("no current"));
    assert_eq!(
        (cur.version, cur.key_name.as_str()),
        (2, "Patient/x"),
        "current untouched"
    );
    // Then expunged: the second amendment keeps the re-sealed state.
    let (before2, now2) = amendment_of(&got, AmendmentKind::Expunge, None, "Patient/y");
    written(store, "expunge", move |tx| {
        tx.amend_version(&before2, &now2, b"leaf expunge")
    });
    let gone = ok(store.version(&ty("Observation"), &rid("a"), Some(1)), "v1")
        .unwrap_or_else(|| panic!("no v1"));
    assert!(gone.expunged && gone.body.is_none());
    let all = ok(store.amendments_after(None, 10), "amendments");
    assert_eq!(
        all.iter()
            .map(|a| (a.seq, a.kind, a.key_name.as_str(), a.leaf))
            .collect::<Vec<_>>(),
        vec![
            (
                1,
                AmendmentKind::Reseal,
                "Patient/x",
                v1.leaf.unwrap_or_default()
            ),
            (2, AmendmentKind::Expunge, "Patient/y", size),
        ]
    );
    assert_eq!(all[0].digest, Some(medvault_crypto::sha256(b"a v1")));
    assert_eq!(all[1].digest, Some(medvault_crypto::sha256(b"resealed")));
    assert_eq!(
        (all[0].salt, all[0].last_updated_micros),
        (v1.salt.unwrap_or_default(), 100)
    );
    let after = ok(
        store.amendments_after(Some(("Observation", "a", 1, 1)), 10),
        "page",
    );
    assert_eq!(after.len(), 1);
    // A version that does not exist is not amended, and its transaction leaves nothing.
    let size = ok(store.ledger_size(), "size");
    let mut missing = v1.clone();
    missing.version = 7;
    let (before3, now3) = amendment_of(&missing, AmendmentKind::Expunge, None, "Patient/x");
    let r = write_with(store, move |tx| {
        tx.amend_version(&before3, &now3, b"leaf missing")
    });
    assert!(matches!(r, Err(StoreError::Conflict)), "{r:?}");
    assert_eq!(ok(store.ledger_size(), "size"), size);
    assert_eq!(ok(store.amendments_after(None, 10), "amendments").len(), 2);
}

fn versions_and_history(store: &dyn Store) {
    put_all(
        store,
        [
            (
                version("Patient", "a", 1, 100, "Patient/a", Some(b"v1")),
                vec![],
            ),
            (
                version("Patient", "a", 2, 200, "Patient/a", Some(b"v2")),
                vec![],
            ),
            (
                version("Patient", "b", 1, 150, "Patient/b", Some(b"b1")),
                vec![],
            ),
        ],
    );
    let dup = put(
        store,
        version("Patient", "a", 2, 300, "Patient/a", Some(b"again")),
        vec![],
    );
    assert!(
        matches!(dup, Err(StoreError::Conflict)),
        "duplicate version must conflict: {dup:?}"
    );
    let cur = ok(store.current(&ty("Patient"), &rid("a")), "current")
        .unwrap_or_else(|| panic!("no current"));
    assert_eq!((cur.version, cur.deleted), (2, false));
    let latest = ok(store.version(&ty("Patient"), &rid("a"), None), "latest")
        .unwrap_or_else(|| panic!("no latest"));
    assert_eq!(latest.body.as_ref().map(Sealed::as_bytes), Some(&b"v2"[..]));
    let v1 = ok(store.version(&ty("Patient"), &rid("a"), Some(1)), "v1")
        .unwrap_or_else(|| panic!("no v1"));
    assert_eq!(
        (
            v1.last_updated_micros,
            v1.body.as_ref().map(Sealed::as_bytes)
        ),
        (100, Some(&b"v1"[..]))
    );
    assert_eq!(
        ok(store.version(&ty("Patient"), &rid("a"), Some(3)), "v3"),
        None
    );
    assert_eq!(
        ok(
            store.version(&ty("Observation"), &rid("a"), None),
            "other type"
        ),
        None
    );
    // Delete marker.
    put_all(
        store,
        [(version("Patient", "a", 3, 400, "Patient/a", None), vec![])],
    );
    let cur = ok(store.current(&ty("Patient"), &rid("a")), "current")
        .unwrap_or_else(|| panic!("no current"));
    assert_eq!((cur.version, cur.deleted), (3, true));
    let h = ok(
        store.history(&ty("Patient"), Some(&rid("a")), 0, 10),
        "history",
    );
    assert_eq!(h.total, 3);
    assert_eq!(
        h.rows.iter().map(|r| r.version).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    let h = ok(store.history(&ty("Patient"), None, 1, 2), "type history");
    assert_eq!(h.total, 4);
    assert_eq!(
        h.rows
            .iter()
            .map(|r| (r.id.as_str(), r.version))
            .collect::<Vec<_>>(),
        vec![("a", 2), ("b", 1)]
    );
}

fn failed_op_leaves_nothing(store: &dyn Store) {
    let r = store.write(Box::new(|tx| {
        tx.put_version(
            &version("Patient", "x", 1, 1, "Patient/x", Some(b"x")),
            &[entry("family", 1)],
            b"leaf",
        )?;
        tx.set_meta("k", "v")?;
        Err(StoreError::Aborted("op gave up".into()))
    }));
    assert!(
        matches!(r, Err(StoreError::Aborted(_))),
        "op error is passed through: {r:?}"
    );
    assert_eq!(
        ok(store.current(&ty("Patient"), &rid("x")), "current"),
        None
    );
    assert_eq!(ok(store.meta("k"), "meta"), None);
    let q = IndexQuery {
        clauses: vec![vec![entry("family", 1)]],
        limit: 10,
        ..IndexQuery::new(ty("Patient"))
    };
    assert_eq!(ok(store.search(&q), "search").total, 0);
    // Concurrent writers: every acknowledged write is there.
    std::thread::scope(|s| {
        for t in 0..4u8 {
            s.spawn(move || {
                for i in 0..25u8 {
                    let id = format!("c{t}-{i}");
                    let v = version(
                        "Patient",
                        &id,
                        1,
                        i64::from(i),
                        &format!("Patient/{id}"),
                        Some(b"c"),
                    );
                    ok(put(store, v, vec![entry("family", t)]), "concurrent put");
                }
            });
        }
    });
    for t in 0..4u8 {
        let q = IndexQuery {
            clauses: vec![vec![entry("family", t)]],
            limit: 100,
            ..IndexQuery::new(ty("Patient"))
        };
        assert_eq!(ok(store.search(&q), "search").total, 25, "writer {t}");
    }
    let out = written(store, "write_with", |tx| Ok(tx.meta("missing")?.is_none()));
    assert!(out);
}

fn search_semantics(store: &dyn Store) {
    // a: family=1 given=2; b: family=1 given=3; c: family=4; d deleted with family=1.
    put_all(
        store,
        [
            (
                version("Patient", "a", 1, 10, "Patient/a", Some(b"a")),
                vec![entry("family", 1), entry("given", 2)],
            ),
            (
                version("Patient", "b", 1, 20, "Patient/b", Some(b"b")),
                vec![entry("family", 1), entry("given", 3)],
            ),
            (
                version("Patient", "c", 1, 30, "Patient/c", Some(b"c")),
                vec![entry("family", 4)],
            ),
            (
                version("Patient", "d", 1, 40, "Patient/d", Some(b"d")),
                vec![entry("family", 1)],
            ),
            (version("Patient", "d", 2, 50, "Patient/d", None), vec![]),
            (
                version("Observation", "o", 1, 60, "Patient/a", Some(b"o")),
                vec![entry("family", 1)],
            ),
        ],
    );
    let ids = |q: &IndexQuery| -> (Vec<String>, u64) {
        let p = ok(store.search(q), "search");
        (p.rows.into_iter().map(|r| r.id).collect(), p.total)
    };
    let base = IndexQuery {
        limit: 10,
        ..IndexQuery::new(ty("Patient"))
    };
    let fam1 = IndexQuery {
        clauses: vec![vec![entry("family", 1)]],
        ..base.clone()
    };
    assert_eq!(
        ids(&fam1),
        (vec!["b".into(), "a".into()], 2),
        "deleted and other types excluded, newest first"
    );
    let and = IndexQuery {
        clauses: vec![vec![entry("family", 1)], vec![entry("given", 3)]],
        ..base.clone()
    };
    assert_eq!(ids(&and), (vec!["b".into()], 1), "clauses AND");
    let or = IndexQuery {
        clauses: vec![vec![entry("family", 4), entry("family", 1)]],
        sort: SortOrder::IdAsc,
        ..base.clone()
    };
    assert_eq!(
        ids(&or),
        (vec!["a".into(), "b".into(), "c".into()], 3),
        "values OR"
    );
    // A keyset scan of the live current versions: id order, deleted and other types left out.
    let scan = |after: Option<&str>, since: Option<i64>, limit: u64| -> Vec<String> {
        ok(
            store.current_after(&ty("Patient"), after, since, limit),
            "current_after",
        )
        .into_iter()
        .map(|r| r.id)
        .collect()
    };
    assert_eq!(scan(None, None, 2), vec!["a", "b"]);
    assert_eq!(
        scan(Some("b"), None, 10),
        vec!["c"],
        "after b; d is deleted"
    );
    assert_eq!(scan(None, Some(20), 10), vec!["b", "c"], "changed since 20");
    let wrong_param = IndexQuery {
        clauses: vec![vec![entry("given", 1)]],
        ..base.clone()
    };
    assert_eq!(ids(&wrong_param).1, 0, "values are per parameter");
    let page = IndexQuery {
        sort: SortOrder::LastUpdatedAsc,
        offset: 1,
        limit: 1,
        ..base.clone()
    };
    assert_eq!(ids(&page), (vec!["b".into()], 3), "offset/limit with total");
    let by_id = IndexQuery {
        ids: Some(vec!["c".into(), "d".into(), "zz".into()]),
        ..base.clone()
    };
    assert_eq!(ids(&by_id), (vec!["c".into()], 1), "_id");
    let window = IndexQuery {
        updated_from: Some(20),
        updated_to: Some(30),
        ..base.clone()
    };
    assert_eq!(
        ids(&window),
        (vec!["b".into()], 1),
        "_lastUpdated window [from, to)"
    );
    let desc = IndexQuery {
        sort: SortOrder::IdDesc,
        ..base.clone()
    };
    assert_eq!(ids(&desc).0, vec!["c".to_owned(), "b".into(), "a".into()]);
    // Updating replaces the index entries.
    put_all(
        store,
        [(
            version("Patient", "a", 2, 70, "Patient/a", Some(b"a2")),
            vec![entry("family", 4)],
        )],
    );
    assert_eq!(
        ids(&fam1),
        (vec!["b".into()], 1),
        "old index entries removed on update"
    );
}

/// Every step of a walk from the newest candidate on, `limit` at a time: each step's match ids
/// and what it examined.
fn walk(store: &dyn Store, q: &IndexQuery, limit: u64) -> Vec<(Vec<String>, u64)> {
    let mut steps = Vec::new();
    let mut before = None;
    loop {
        let step = ok(store.scan(q, before, limit), "scan");
        assert!(step.examined <= limit, "a step looks at most at its limit");
        let positions: Vec<u64> = step.rows.iter().map(|(p, _)| *p).collect();
        assert!(
            positions.windows(2).all(|w| w[0] > w[1]),
            "positions descend: {positions:?}"
        );
        if let (Some(b), Some(first)) = (before, positions.first()) {
            assert!(*first < b, "a step starts before its position");
        }
        steps.push((
            step.rows.into_iter().map(|(_, v)| v.id).collect(),
            step.examined,
        ));
        match step.resume {
            Some(next) => before = Some(next),
            None => return steps,
        }
    }
}

/// Ids of every match of a walk.
fn walked(store: &dyn Store, q: &IndexQuery, limit: u64) -> Vec<String> {
    walk(store, q, limit)
        .into_iter()
        .flat_map(|(ids, _)| ids)
        .collect()
}

fn scan_walks_in_creation_order(store: &dyn Store) {
    // p0..p9 created in order; even ones family=1, odd family=2; p0..p3 given=7; p3 deleted;
    // an Observation shares family=1's bytes (values are per type in practice; the type bounds).
    for i in 0..10u8 {
        let id = format!("p{i}");
        let mut index = vec![entry("family", 1 + i % 2)];
        if i < 4 {
            index.push(entry("given", 7));
        }
        put_all(
            store,
            [(
                version(
                    "Patient",
                    &id,
                    1,
                    i64::from(i) * 10,
                    &format!("Patient/{id}"),
                    Some(b"p"),
                ),
                index,
            )],
        );
    }
    put_all(
        store,
        [
            (version("Patient", "p3", 2, 200, "Patient/p3", None), vec![]),
            (
                version("Observation", "o", 1, 210, "Patient/p0", Some(b"o")),
                vec![entry("family", 1)],
            ),
        ],
    );
    let base = IndexQuery::new(ty("Patient"));
    let names = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    // The whole type, newest first, two candidates a step; the deleted one is looked at.
    let steps = walk(store, &base, 2);
    assert_eq!(
        steps,
        vec![
            (names(&["p9", "p8"]), 2),
            (names(&["p7", "p6"]), 2),
            (names(&["p5", "p4"]), 2),
            (names(&["p2"]), 2),
            (names(&["p1", "p0"]), 2),
            (names(&[]), 0),
        ],
        "type walk"
    );
    let fam1 = IndexQuery {
        clauses: vec![vec![entry("family", 1)]],
        ..base.clone()
    };
    assert_eq!(
        walked(store, &fam1, 2),
        names(&["p8", "p6", "p4", "p2", "p0"])
    );
    assert_eq!(
        walk(store, &fam1, 100),
        vec![(names(&["p8", "p6", "p4", "p2", "p0"]), 6)],
        "one step finds the end (the Observation's entry looked at, left out)"
    );
    // ORed values merge in position order, each once.
    let either = IndexQuery {
        clauses: vec![vec![
            entry("family", 2),
            entry("family", 1),
            entry("family", 2),
        ]],
        ..base.clone()
    };
    assert_eq!(
        walked(store, &either, 3),
        names(&["p9", "p8", "p7", "p6", "p5", "p4", "p2", "p1", "p0"])
    );
    // ANDed clauses: the rarer (given=7: 3 entries, family=2: 4) drives; the other is checked.
    let and = IndexQuery {
        clauses: vec![vec![entry("family", 2)], vec![entry("given", 7)]],
        ..base.clone()
    };
    let steps = walk(store, &and, 100);
    assert_eq!(
        steps,
        vec![(names(&["p1"]), 3)],
        "driven by the rarer clause"
    );
    // Many values, most with no entries: the same walk, whichever drives.
    let many = |n: u8| {
        (100..100 + n)
            .map(|v| entry("family", v))
            .collect::<Vec<_>>()
    };
    let wide = IndexQuery {
        clauses: vec![[vec![entry("family", 1)], many(40)].concat()],
        ..base.clone()
    };
    assert_eq!(
        walked(store, &wide, 2),
        names(&["p8", "p6", "p4", "p2", "p0"])
    );
    assert_eq!(
        walked(store, &wide, 100),
        names(&["p8", "p6", "p4", "p2", "p0"])
    );
    let checked = IndexQuery {
        clauses: vec![
            [many(30), vec![entry("family", 2)]].concat(),
            vec![entry("given", 7)],
        ],
        ..base.clone()
    };
    assert_eq!(
        walked(store, &checked, 2),
        names(&["p1"]),
        "a wide clause checked"
    );
    let ids = IndexQuery {
        ids: Some(vec!["p1".into(), "p8".into(), "p3".into(), "zz".into()]),
        clauses: vec![vec![entry("family", 2)]],
        ..base.clone()
    };
    assert_eq!(
        walk(store, &ids, 100),
        vec![(names(&["p1"]), 3)],
        "ids drive"
    );
    let window = IndexQuery {
        updated_from: Some(20),
        updated_to: Some(60),
        ..fam1.clone()
    };
    assert_eq!(
        walked(store, &window, 2),
        names(&["p4", "p2"]),
        "time bounds"
    );
    let none = IndexQuery {
        clauses: vec![vec![]],
        ..base.clone()
    };
    assert_eq!(walk(store, &none, 10), vec![(names(&[]), 0)]);
    // An update keeps the resource's position, and its new entries replace the old. The first
    // step looks at the Observation's entry and p8's.
    let mid = ok(store.scan(&fam1, None, 2), "scan").resume;
    put_all(
        store,
        [
            (
                version("Patient", "p8", 2, 300, "Patient/p8", Some(b"p8")),
                vec![entry("family", 2)],
            ),
            (
                version("Patient", "p2", 2, 310, "Patient/p2", Some(b"p2")),
                vec![entry("family", 1)],
            ),
        ],
    );
    let mut rest = Vec::new();
    let mut before = mid;
    while let Some(b) = before {
        let step = ok(store.scan(&fam1, Some(b), 2), "scan");
        rest.extend(step.rows.into_iter().map(|(_, v)| (v.id, v.version)));
        before = step.resume;
    }
    assert_eq!(
        rest,
        vec![
            ("p6".to_owned(), 1),
            ("p4".into(), 1),
            ("p2".into(), 2),
            ("p0".into(), 1)
        ],
        "continuing after p8: the updated p2 once, at its place"
    );
    assert_eq!(walked(store, &fam1, 10), names(&["p6", "p4", "p2", "p0"]));
}

fn destroy_shreds_compartment(store: &dyn Store) {
    let wk = WrappedKey::from_stored(vec![7; 60]);
    wrote(store, "deks", move |tx| {
        tx.put_data_key(&kn("Patient/a"), 1, 1, &wk)?;
        tx.put_data_key(&kn("Patient/b"), 1, 1, &wk)
    });
    put_all(
        store,
        [
            (
                version("Patient", "a", 1, 1, "Patient/a", Some(b"a")),
                vec![entry("name", 1)],
            ),
            (
                version("Observation", "o1", 1, 2, "Patient/a", Some(b"o")),
                vec![entry("code", 1)],
            ),
            (
                version("Patient", "b", 1, 3, "Patient/b", Some(b"b")),
                vec![entry("name", 1)],
            ),
        ],
    );
    let n = written(store, "destroy", |tx| tx.destroy_data_key(&kn("Patient/a")));
    assert_eq!(n, 2, "two resources in the compartment");
    let row = ok(store.data_key(&kn("Patient/a")), "dek")
        .unwrap_or_else(|| panic!("row kept as a tombstone"));
    assert_eq!(
        (row.wrapped, row.kek_version),
        (None, None),
        "wrapped key destroyed"
    );
    let a = ok(store.version(&ty("Patient"), &rid("a"), Some(1)), "a")
        .unwrap_or_else(|| panic!("row kept"));
    assert!(a.shredded, "version reports its key is gone");
    let b = ok(store.version(&ty("Patient"), &rid("b"), None), "b").unwrap_or_else(|| panic!("b"));
    assert!(!b.shredded, "other patients untouched");
    let q = IndexQuery {
        clauses: vec![vec![entry("name", 1)]],
        limit: 10,
        ..IndexQuery::new(ty("Patient"))
    };
    let p = ok(store.search(&q), "search");
    assert_eq!(
        p.rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["b"]
    );
    let all = IndexQuery {
        limit: 10,
        ..IndexQuery::new(ty("Observation"))
    };
    assert_eq!(
        ok(store.search(&all), "search").total,
        0,
        "shredded resources leave search"
    );
    let h = ok(store.history(&ty("Patient"), None, 0, 10), "type history");
    assert_eq!(
        (
            h.total,
            h.rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>()
        ),
        (1, vec!["b"]),
        "type history leaves erased versions out of rows and total"
    );
    let h = ok(
        store.history(&ty("Patient"), Some(&rid("a")), 0, 10),
        "instance history",
    );
    assert!(
        h.total == 1 && h.rows[0].shredded,
        "instance history reports them as shredded"
    );
}

fn token_row(id: &str, created: i64) -> TokenRow {
    TokenRow {
        role: "admin".into(),
        token_id: id.into(),
        created_micros: created,
        expires_micros: created + 100,
        revoked_micros: None,
        last_used_micros: None,
    }
}

fn tokens_by_hash(store: &dyn Store) {
    let h = TokenHash([3u8; 32]);
    let t = token_row("tok-1", 5);
    wrote(store, "add", move |tx| tx.add_token(&h, &t));
    let row = ok(store.token(&h), "token").unwrap_or_else(|| panic!("token missing"));
    assert_eq!(row, token_row("tok-1", 5), "stored as given");
    assert_eq!(ok(store.token(&TokenHash([4; 32])), "other"), None);
    let t2 = token_row("tok-2", 6);
    let dup = store.write(Box::new(move |tx| tx.add_token(&h, &t2)));
    assert!(matches!(dup, Err(StoreError::Conflict)));
    let t3 = token_row("tok-1", 7);
    let dup = store.write(Box::new(move |tx| tx.add_token(&TokenHash([5; 32]), &t3)));
    assert!(
        matches!(dup, Err(StoreError::Conflict)),
        "token ids are unique"
    );
}

fn tokens_expire_revoke_and_record_use(store: &dyn Store) {
    let (a, b) = (token_row("tok-a", 20), token_row("tok-b", 10));
    written(store, "add", move |tx| {
        tx.add_token(&TokenHash([1; 32]), &a)?;
        tx.add_token(&TokenHash([2; 32]), &b)
    });
    let listed: Vec<String> = ok(store.tokens(), "list")
        .into_iter()
        .map(|t| t.token_id)
        .collect();
    assert_eq!(listed, ["tok-b", "tok-a"], "oldest first");
    // A use is recorded; an older time never replaces a newer one.
    written(store, "use", |tx| tx.token_used("tok-a", 50));
    written(store, "use", |tx| tx.token_used("tok-a", 40));
    let row = ok(store.token(&TokenHash([1; 32])), "read").unwrap_or_else(|| panic!("missing"));
    assert_eq!(row.last_used_micros, Some(50));
    // Revoked once; the row stays (for `token list` and the audit trail).
    assert!(written(store, "revoke", |tx| tx.revoke_token("tok-a", 60)));
    assert!(!written(store, "revoke again", |tx| tx.revoke_token("tok-a", 70)));
    assert!(!written(store, "revoke unknown", |tx| tx
        .revoke_token("tok-none", 70)));
    let row = ok(store.token(&TokenHash([1; 32])), "read").unwrap_or_else(|| panic!("missing"));
    assert_eq!(
        (row.revoked_micros, row.expires_micros),
        (Some(60), 120),
        "revoked at the first time, expiry unchanged"
    );
    let other = ok(store.token(&TokenHash([2; 32])), "read").unwrap_or_else(|| panic!("missing"));
    assert_eq!(
        other,
        token_row("tok-b", 10),
        "the other token is untouched"
    );
}

fn ledger_leaves_commit_with_their_records(store: &dyn Store) {
    use medvault_ledger::{MemoryTree, leaf_hash, root};
    assert_eq!(ok(store.ledger_size(), "size"), 0);
    let mut want = MemoryTree::new();
    let mut leaves = Vec::new();
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        let v = version(
            "Patient",
            id,
            1,
            i as i64,
            &format!("Patient/{id}"),
            Some(b"x"),
        );
        leaves.push(leaf_for(&v));
        ok(put(store, v, vec![]), "put");
        let detail = AuditDetail {
            salt: [i as u8; 16],
            sealed: Sealed::from_stored(vec![i as u8; 40]),
        };
        let audit_leaf = format!("audit {i}").into_bytes();
        leaves.push(audit_leaf.clone());
        let got = written(store, "append_audit", move |tx| {
            tx.append_audit(&detail, &audit_leaf)
        });
        assert_eq!(got, 2 * i as u64 + 1, "audit leaf index");
    }
    // A failed op appends nothing.
    let r = store.write(Box::new(|tx| {
        let v = version("Patient", "z", 1, 9, "Patient/z", Some(b"x"));
        tx.put_version(&v, &[], b"never")?;
        tx.append_audit(
            &AuditDetail {
                salt: [9; 16],
                sealed: Sealed::from_stored(vec![9; 40]),
            },
            b"never",
        )?;
        Err(StoreError::Aborted("op gave up".into()))
    }));
    assert!(r.is_err());
    // A version without a salt is refused.
    let mut unsalted = version("Patient", "u", 1, 9, "Patient/u", Some(b"x"));
    unsalted.salt = None;
    assert!(
        put(store, unsalted, vec![]).is_err(),
        "unsalted version stored"
    );
    assert_eq!(ok(store.ledger_size(), "size"), 6);
    for l in &leaves {
        want.push(leaf_hash(l));
    }
    let entries = ok(store.ledger_entries(0, 100), "entries");
    assert_eq!(
        entries,
        leaves
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, l)| (i as u64, l))
            .collect::<Vec<_>>()
    );
    // Every leaf was hashed into the tree at commit.
    assert_eq!(
        root(&LedgerNodes(store), 6).unwrap_or_else(|e| panic!("root: {e}")),
        want.root()
    );
    assert_eq!(ok(store.ledger_nodes(0, 4, 10), "nodes").len(), 2);
    assert_eq!(ok(store.ledger_nodes(1, 0, 10), "nodes").len(), 3);
    assert_eq!(ok(store.ledger_nodes(2, 0, 10), "nodes").len(), 1);
    let b = ok(store.version(&ty("Patient"), &rid("b"), Some(1)), "version")
        .unwrap_or_else(|| panic!("b"));
    assert_eq!((b.leaf, b.salt), (Some(2), Some([1; 16])));
    let d = ok(store.audit_detail(3), "audit").unwrap_or_else(|| panic!("detail"));
    assert_eq!(d.salt, [1; 16]);
    assert_eq!(ok(store.audit_detail(2), "audit"), None);
    // Checkpoints: stored, replaced with more signatures, latest first.
    for (size, note) in [(3, "three"), (6, "six"), (6, "six+w")] {
        wrote(store, "cp", move |tx| tx.put_checkpoint(size, note));
    }
    assert_eq!(ok(store.checkpoint(None), "cp"), Some((6, "six+w".into())));
    assert_eq!(
        ok(store.checkpoint(Some(3)), "cp"),
        Some((3, "three".into()))
    );
    assert_eq!(ok(store.checkpoint(Some(4)), "cp"), None);
    // Witness state per origin, replaced on each cosignature.
    assert_eq!(ok(store.witnessed("log.example/a"), "witnessed"), None);
    for (size, note) in [(3u8, "n3"), (5, "n5")] {
        wrote(store, "set_witnessed", move |tx| {
            tx.set_witnessed("log.example/a", size.into(), &[size; 32], note)
        });
    }
    assert_eq!(
        ok(store.witnessed("log.example/a"), "witnessed"),
        Some((5, [5; 32]))
    );
    assert_eq!(ok(store.witnessed("log.example/b"), "witnessed"), None);
    // Versions page in a stable order.
    let first = ok(store.versions_after(None, 2), "page");
    let last = first.last().unwrap_or_else(|| panic!("page"));
    let rest = ok(
        store.versions_after(Some((&last.resource_type, &last.id, last.version)), 10),
        "page",
    );
    let ids: Vec<_> = first.iter().chain(&rest).map(|v| v.id.clone()).collect();
    assert_eq!(ids, vec!["a", "b", "c"]);
}

fn user_row(id: &str, name: u8) -> UserRow {
    UserRow {
        id: id.into(),
        name_index: BlindValue([name; 16]),
        name_sealed: Sealed::from_stored(vec![name; 40]),
        role: "clinician".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        disabled: false,
        created_micros: 1,
        totp: None,
        totp_pending: Some(Sealed::from_stored(vec![9; 48])),
        totp_last_step: None,
        failed_logins: 0,
        locked_until_micros: 0,
        patient_id: None,
        practitioner: None,
        last_login_micros: None,
    }
}

/// A session of `usr_a` whose token hashes to `[n; 32]`.
fn session_row(n: u8) -> SessionRow {
    SessionRow {
        hash: TokenHash([n; 32]),
        session_id: format!("ses_{n}"),
        user_id: "usr_a".into(),
        aal: Aal::Two,
        created_micros: 10,
        last_seen_micros: 11,
        expires_micros: 12,
    }
}

/// A client with two redirect URIs.
fn client_row(id: &str) -> ClientRow {
    ClientRow {
        client_id: id.into(),
        name: "Lab feed".into(),
        jwks: r#"{"keys":[]}"#.into(),
        scopes: "system/Observation.rs".into(),
        disabled: false,
        created_micros: 1,
        redirect_uris: vec![
            "https://app.example/cb".into(),
            "http://localhost:9/cb".into(),
        ],
    }
}

/// An access token of `cli_1` for `usr_a` in family `fam_1`, whose hash is `[n; 32]`.
fn access_token_row(n: u8, expires: i64) -> AccessTokenRow {
    AccessTokenRow {
        hash: TokenHash([n; 32]),
        client_id: "cli_1".into(),
        scopes: "system/Observation.rs".into(),
        issued_micros: 0,
        expires_micros: expires,
        user_id: Some("usr_a".into()),
        family: Some("fam_1".into()),
    }
}

/// An unused refresh token of `cli_1` for `usr_a` in family `fam_1`, whose hash is `[n; 32]`.
fn grant_row(n: u8) -> GrantRow {
    GrantRow {
        hash: TokenHash([n; 32]),
        kind: "refresh".into(),
        client_id: "cli_1".into(),
        user_id: "usr_a".into(),
        scopes: "user/*.rs".into(),
        redirect_uri: String::new(),
        code_challenge: String::new(),
        family: "fam_1".into(),
        expires_micros: 1_000,
        used: false,
    }
}

/// A peer; `node-b` is mapped to an organization.
fn peer_row(node: &str, url: &str) -> PeerRow {
    PeerRow {
        node: node.into(),
        fingerprint: format!("SHA-256:{node}"),
        url: url.into(),
        document: format!(r#"{{"node":"{node}"}}"#),
        organization: (node == "node-b").then(|| "Organization/org-b".into()),
        registered_micros: 5,
        registered_by: "cli".into(),
    }
}

/// A break-glass grant of `usr_a`.
fn break_glass_row(id: &str, patient: &str, opened: i64, expires: i64) -> BreakGlassRow {
    BreakGlassRow {
        id: id.into(),
        user_id: "usr_a".into(),
        patient: patient.into(),
        reason: Sealed::from_stored(vec![3; 40]),
        opened_micros: opened,
        expires_micros: expires,
    }
}

/// An open break-glass alert about `usr_a` and `p1`.
fn alert_row(id: &str, at: i64) -> AlertRow {
    AlertRow {
        id: id.into(),
        kind: "break-glass".into(),
        at_micros: at,
        user_id: "usr_a".into(),
        patient: Some("p1".into()),
        detail: Sealed::from_stored(vec![4; 40]),
        acknowledged_by: None,
        acknowledged_micros: None,
        verdict: None,
        note: None,
    }
}

/// A response to alert `alert` acting on `subject`.
fn response_row(id: &str, alert: &str, at: i64, until: Option<i64>, dry_run: bool) -> ResponseRow {
    ResponseRow {
        id: id.into(),
        alert_id: alert.into(),
        action: "throttle".into(),
        subject: "user:usr_a".into(),
        at_micros: at,
        until_micros: until,
        dry_run,
        detail: r#"{"playbook":"p"}"#.into(),
        undone_by: None,
        undone_micros: None,
    }
}

fn users_sessions_and_recovery_codes(store: &dyn Store) {
    let alice = user_row("usr_a", 1);
    let a = alice.clone();
    written(store, "put user", move |tx| tx.put_user(&a));
    assert_eq!(ok(store.user("usr_a"), "user"), Some(alice.clone()));
    assert_eq!(
        ok(store.user_by_name(&BlindValue([1; 16])), "by name"),
        Some(alice.clone())
    );
    assert_eq!(
        ok(store.user_by_name(&BlindValue([2; 16])), "by name"),
        None
    );
    // Another user with the same blinded name conflicts; replacing by id does not.
    let clash = user_row("usr_b", 1);
    assert!(matches!(
        write_with(store, move |tx| tx.put_user(&clash)),
        Err(StoreError::Conflict)
    ));
    let mut updated = alice.clone();
    updated.totp = updated.totp_pending.take();
    updated.totp_last_step = Some(7);
    updated.failed_logins = 3;
    updated.locked_until_micros = 99;
    updated.patient_id = Some("p-1".into());
    updated.practitioner = Some("Practitioner/dr-1".into());
    updated.last_login_micros = Some(1_234);
    let u = updated.clone();
    written(store, "replace user", move |tx| tx.put_user(&u));
    assert_eq!(ok(store.user("usr_a"), "user"), Some(updated));
    assert_eq!(ok(store.users(), "users").len(), 1);

    let (s1, s2) = (session_row(1), session_row(2));
    written(store, "sessions", move |tx| {
        tx.put_session(&s1)?;
        tx.put_session(&s2)
    });
    assert_eq!(
        ok(store.session(&TokenHash([1; 32])), "session"),
        Some(session_row(1))
    );
    let one = written(store, "logout", |tx| {
        tx.delete_sessions("usr_a", Some(&TokenHash([1; 32])))
    });
    assert_eq!(one, 1);
    assert_eq!(ok(store.session(&TokenHash([1; 32])), "session"), None);
    let rest = written(store, "all", |tx| tx.delete_sessions("usr_a", None));
    assert_eq!(rest, 1);
    assert_eq!(ok(store.session(&TokenHash([2; 32])), "session"), None);

    // Every assurance level round-trips as its number; a stored number that names no level
    // is refused when read, with the number named.
    for (n, aal) in [(3u8, Aal::One), (4, Aal::Two), (5, Aal::Three)] {
        let row = SessionRow {
            aal,
            ..session_row(n)
        };
        let r = row.clone();
        written(store, "level", move |tx| tx.put_session(&r));
        assert_eq!(ok(store.session(&TokenHash([n; 32])), "level"), Some(row));
    }
    let sessions = crate::dump::NODE_TABLES
        .iter()
        .find(|t| t.name == "sessions")
        .unwrap_or_else(|| panic!("no sessions table"));
    let odd = vec![vec![
        crate::dump::Cell::Bytes(vec![9; 32]),
        crate::dump::Cell::Text("ses_9".into()),
        crate::dump::Cell::Text("usr_a".into()),
        crate::dump::Cell::Int(7),
        crate::dump::Cell::Int(10),
        crate::dump::Cell::Int(11),
        crate::dump::Cell::Int(12),
    ]];
    written(store, "load a session of an unknown level", move |tx| {
        tx.load(sessions, &odd)
    });
    match store.session(&TokenHash([9; 32])) {
        Err(StoreError::Backend(e)) => assert!(
            e.to_string().contains("assurance level 7"),
            "the error names the stored level: {e}"
        ),
        other => panic!("an unknown stored level must be a backend error: {other:?}"),
    }
    written(store, "end the level sessions", |tx| {
        tx.delete_sessions("usr_a", None)
    });

    written(store, "codes", |tx| {
        tx.set_recovery_codes(
            "usr_a",
            &[TokenHash([5; 32]), TokenHash([6; 32]), TokenHash([7; 32])],
        )
    });
    assert_eq!(ok(store.recovery_codes_left("usr_a"), "left"), 3);
    let used = written(store, "use", |tx| {
        tx.use_recovery_code("usr_a", &TokenHash([6; 32]))
    });
    assert!(used);
    let again = written(store, "reuse", |tx| {
        tx.use_recovery_code("usr_a", &TokenHash([6; 32]))
    });
    assert!(!again, "a recovery code works once");
    assert_eq!(ok(store.recovery_codes_left("usr_a"), "left"), 2);
    written(store, "replace codes", |tx| {
        tx.set_recovery_codes("usr_a", &[TokenHash([8; 32])])
    });
    assert_eq!(ok(store.recovery_codes_left("usr_a"), "left"), 1);
}

fn oauth_clients_tokens_and_replay(store: &dyn Store) {
    let client = client_row("cli_1");
    let c = client.clone();
    written(store, "client", move |tx| tx.put_client(&c));
    assert_eq!(ok(store.client("cli_1"), "client"), Some(client.clone()));
    assert_eq!(ok(store.clients(), "clients"), vec![client]);
    let (t1, t2) = (access_token_row(1, 100), access_token_row(2, 300));
    written(store, "t1", move |tx| tx.put_access_token(&t1, 0));
    assert_eq!(
        ok(store.access_token(&TokenHash([1; 32])), "token"),
        Some(access_token_row(1, 100))
    );
    // Storing a token at time 200 forgets the one that expired at 100.
    written(store, "t2", move |tx| tx.put_access_token(&t2, 200));
    assert_eq!(ok(store.access_token(&TokenHash([1; 32])), "token"), None);
    assert_eq!(
        ok(store.access_token(&TokenHash([2; 32])), "token"),
        Some(access_token_row(2, 300))
    );
    // An assertion id works once per client until it expires.
    let first = written(store, "jti", |tx| {
        tx.use_assertion_id("cli_1", "j1", 500, 0)
    });
    let replay = written(store, "jti", |tx| {
        tx.use_assertion_id("cli_1", "j1", 500, 10)
    });
    let other = written(store, "jti", |tx| {
        tx.use_assertion_id("cli_2", "j1", 500, 10)
    });
    assert!(first && !replay && other);
    // Passkeys: per user, replaced by credential id, and a credential id has one owner.
    let sealed = |n: u8| Sealed::from_stored(vec![n; 40]);
    written(store, "passkeys", move |tx| {
        tx.put_passkey("usr_a", b"cred-1", &sealed(1), 1)?;
        tx.put_passkey("usr_a", b"cred-2", &sealed(2), 2)?;
        tx.put_passkey("usr_a", b"cred-1", &sealed(3), 3)
    });
    assert_eq!(
        ok(store.passkeys("usr_a"), "passkeys"),
        vec![
            (b"cred-1".to_vec(), sealed(3)),
            (b"cred-2".to_vec(), sealed(2))
        ]
    );
    assert!(matches!(
        write_with(store, move |tx| tx.put_passkey(
            "usr_b",
            b"cred-1",
            &sealed(4),
            4
        )),
        Err(StoreError::Conflict)
    ));
    assert!(ok(store.passkeys("usr_b"), "passkeys").is_empty());
    // Grants: used once; revoking the family removes its grants and tokens.
    let grant = grant_row(7);
    let g = grant.clone();
    written(store, "grant", move |tx| tx.put_grant(&g));
    assert_eq!(ok(store.grant(&TokenHash([7; 32])), "grant"), Some(grant));
    let first = written(store, "use", |tx| tx.use_grant(&TokenHash([7; 32])));
    let second = written(store, "reuse", |tx| tx.use_grant(&TokenHash([7; 32])));
    assert!(first && !second, "a grant is used once");
    assert!(ok(store.grant(&TokenHash([7; 32])), "grant").is_some_and(|g| g.used));
    let gone = written(store, "revoke", |tx| tx.revoke_family("fam_1"));
    assert_eq!(gone, 2, "the grant and the family's access token");
    assert_eq!(ok(store.grant(&TokenHash([7; 32])), "grant"), None);
    assert_eq!(ok(store.access_token(&TokenHash([2; 32])), "token"), None);
}

fn peers_register_replace_remove(store: &dyn Store) {
    assert_eq!(ok(store.peers(), "no peers"), vec![]);
    let (b, a) = (
        peer_row("node-b", "https://b:1"),
        peer_row("node-a", "https://a:1"),
    );
    let (b2, a2) = (b.clone(), a.clone());
    written(store, "put peers", move |tx| {
        tx.put_peer(&b2)?;
        tx.put_peer(&a2)
    });
    assert_eq!(ok(store.peers(), "peers"), vec![a.clone(), b.clone()]);
    // Registering a node again replaces its row (e.g. after its keys rotated).
    let b_new = peer_row("node-b", "https://b:2");
    let b3 = b_new.clone();
    written(store, "replace", move |tx| tx.put_peer(&b3));
    assert_eq!(ok(store.peer("node-b"), "peer"), Some(b_new));
    assert_eq!(ok(store.peer("node-c"), "missing peer"), None);
    let removed = written(store, "delete", |tx| {
        Ok((tx.delete_peer("node-a")?, tx.delete_peer("node-a")?))
    });
    assert_eq!(removed, (true, false), "a second removal finds nothing");
    assert_eq!(ok(store.peers(), "peers").len(), 1);
    // Receipts are kept per (sender, bundle) until the bundle expires.
    written(store, "receipts", |tx| {
        tx.put_share_receipt("node-a", "b1", "r1", 100, 0)?;
        tx.put_share_receipt("node-b", "b1", "r2", 300, 0)
    });
    assert_eq!(
        ok(store.share_receipt("node-a", "b1"), "r").as_deref(),
        Some("r1")
    );
    assert_eq!(ok(store.share_receipt("node-a", "b2"), "r"), None);
    written(store, "later receipt", |tx| {
        tx.put_share_receipt("node-b", "b2", "r3", 400, 200)
    });
    assert_eq!(
        ok(store.share_receipt("node-a", "b1"), "r"),
        None,
        "expired at 100"
    );
    assert_eq!(
        ok(store.share_receipt("node-b", "b1"), "r").as_deref(),
        Some("r2")
    );
}

fn break_glass_and_alerts(store: &dyn Store) {
    let (g1, g2, g3) = (
        break_glass_row("bg_1", "p1", 100, 200),
        break_glass_row("bg_2", "p1", 150, 300),
        break_glass_row("bg_3", "p2", 100, 200),
    );
    let dup = g1.clone();
    written(store, "put grants", move |tx| {
        tx.put_break_glass(&g1)?;
        tx.put_break_glass(&g2)?;
        tx.put_break_glass(&g3)
    });
    assert!(matches!(
        write_with(store, move |tx| tx.put_break_glass(&dup)),
        Err(StoreError::Conflict)
    ));
    // Open means opened at or before now and ending after it; the one ending last wins.
    assert_eq!(ok(store.break_glass("usr_a", "p1", 99), "bg"), None);
    let at = |now| ok(store.break_glass("usr_a", "p1", now), "bg").map(|g| g.id);
    assert_eq!(at(120).as_deref(), Some("bg_1"));
    assert_eq!(at(160).as_deref(), Some("bg_2"));
    assert_eq!(at(250).as_deref(), Some("bg_2"));
    assert_eq!(at(300), None);
    assert_eq!(ok(store.break_glass("usr_b", "p1", 160), "bg"), None);
    assert_eq!(ok(store.break_glass("usr_a", "p3", 160), "bg"), None);

    let (a1, a2) = (alert_row("alr_1", 10), alert_row("alr_2", 20));
    written(store, "put alerts", move |tx| {
        tx.put_alert(&a1)?;
        tx.put_alert(&a2)
    });
    let ids = |open| -> Vec<String> {
        ok(store.alerts(open), "alerts")
            .into_iter()
            .map(|a| a.id)
            .collect()
    };
    assert_eq!(ids(true), ["alr_2", "alr_1"]);
    let ack = |id: &'static str, at: i64| {
        written(store, "ack", move |tx| {
            tx.acknowledge_alert(id, "usr_po", at)
        })
    };
    assert!(ack("alr_1", 30));
    assert!(!ack("alr_1", 31), "acknowledged once");
    assert!(!ack("alr_9", 31), "unknown alert");
    assert_eq!(ids(true), ["alr_2"]);
    assert_eq!(ids(false), ["alr_2", "alr_1"]);
    let all = ok(store.alerts(false), "alerts");
    assert_eq!(all[1].acknowledged_by.as_deref(), Some("usr_po"));
    assert_eq!(all[1].acknowledged_micros, Some(30));
    assert_eq!(all[1], {
        let mut a = alert_row("alr_1", 10);
        a.acknowledged_by = Some("usr_po".into());
        a.acknowledged_micros = Some(30);
        a
    });

    // Verdicts: once per alert; an open alert is acknowledged by its verdict, an acknowledged
    // one keeps who acknowledged it.
    let mut a3 = alert_row("alr_3", 40);
    a3.kind = "sentinel".into();
    a3.user_id = "usr_b".into();
    a3.patient = Some("p2".into());
    written(store, "put alert", move |tx| tx.put_alert(&a3));
    let judge = |id: &'static str, verdict: &'static str, at: i64| {
        written(store, "judge", move |tx| {
            tx.judge_alert(
                id,
                "usr_po2",
                at,
                verdict,
                Some(&Sealed::from_stored(vec![7; 30])),
            )
        })
    };
    assert!(judge("alr_3", "confirmed", 50));
    assert!(!judge("alr_3", "dismissed", 51), "judged once");
    assert!(judge("alr_1", "dismissed", 52));
    assert!(!judge("alr_9", "dismissed", 52), "unknown alert");
    let a3 = ok(store.alert("alr_3"), "alert").unwrap_or_else(|| panic!("alr_3 is stored"));
    assert_eq!(
        (
            a3.verdict.as_deref(),
            a3.acknowledged_by.as_deref(),
            a3.acknowledged_micros
        ),
        (Some("confirmed"), Some("usr_po2"), Some(50))
    );
    assert_eq!(a3.note, Some(Sealed::from_stored(vec![7; 30])));
    let a1 = ok(store.alert("alr_1"), "alert").unwrap_or_else(|| panic!("alr_1 is stored"));
    assert_eq!(
        (a1.verdict.as_deref(), a1.acknowledged_by.as_deref()),
        (Some("dismissed"), Some("usr_po"))
    );
    assert_eq!(ok(store.alert("alr_9"), "alert"), None);
    let mut verdicts = ok(store.verdicts(0), "verdicts");
    verdicts.sort();
    assert_eq!(
        verdicts,
        [
            (
                "break-glass".to_owned(),
                "usr_a".to_owned(),
                "dismissed".to_owned()
            ),
            (
                "sentinel".to_owned(),
                "usr_b".to_owned(),
                "confirmed".to_owned()
            ),
        ]
    );
    assert_eq!(ok(store.verdicts(11), "verdicts").len(), 1);

    // Pages: filters and the (at, id) cursor.
    let page = |q: AlertQuery<'_>| -> Vec<String> {
        ok(store.alerts_page(&q), "page")
            .into_iter()
            .map(|a| a.id)
            .collect()
    };
    let all_of = AlertQuery {
        limit: 10,
        ..AlertQuery::default()
    };
    assert_eq!(page(all_of), ["alr_3", "alr_2", "alr_1"]);
    assert_eq!(page(AlertQuery { limit: 2, ..all_of }), ["alr_3", "alr_2"]);
    assert_eq!(
        page(AlertQuery {
            before: Some((20, "alr_2")),
            ..all_of
        }),
        ["alr_1"]
    );
    assert_eq!(
        page(AlertQuery {
            open_only: true,
            ..all_of
        }),
        ["alr_2"]
    );
    assert_eq!(
        page(AlertQuery {
            kind: Some("sentinel"),
            ..all_of
        }),
        ["alr_3"]
    );
    assert_eq!(
        page(AlertQuery {
            user: Some("usr_a"),
            ..all_of
        }),
        ["alr_2", "alr_1"]
    );
    assert_eq!(
        page(AlertQuery {
            patient: Some("p2"),
            ..all_of
        }),
        ["alr_3"]
    );

    // Responses: listed newest first, by alert; in force until undone or lapsed, never when
    // only rehearsed.
    let (r1, r2, r3) = (
        response_row("rsp_1", "alr_3", 100, None, false),
        response_row("rsp_2", "alr_3", 110, Some(200), false),
        response_row("rsp_3", "alr_2", 120, None, true),
    );
    let dup = r1.clone();
    written(store, "put responses", move |tx| {
        tx.put_response(&r1)?;
        tx.put_response(&r2)?;
        tx.put_response(&r3)
    });
    assert!(matches!(
        write_with(store, move |tx| tx.put_response(&dup)),
        Err(StoreError::Conflict)
    ));
    let ids = |rows: Vec<ResponseRow>| -> Vec<String> { rows.into_iter().map(|r| r.id).collect() };
    assert_eq!(
        ids(ok(store.responses(None, None, 10), "r")),
        ["rsp_3", "rsp_2", "rsp_1"]
    );
    assert_eq!(
        ids(ok(store.responses(Some("alr_3"), None, 10), "r")),
        ["rsp_2", "rsp_1"]
    );
    assert_eq!(
        ids(ok(store.responses(None, Some((110, "rsp_2")), 10), "r")),
        ["rsp_1"]
    );
    assert_eq!(
        ids(ok(store.active_responses(150), "r")),
        ["rsp_1", "rsp_2"]
    );
    assert_eq!(ids(ok(store.active_responses(200), "r")), ["rsp_1"]);
    let undo = |id: &'static str| {
        written(store, "undo", move |tx| {
            tx.undo_response(id, "usr_admin", 160)
        })
    };
    assert!(undo("rsp_1"));
    assert!(!undo("rsp_1"), "undone once");
    assert!(!undo("rsp_9"));
    assert_eq!(ids(ok(store.active_responses(150), "r")), ["rsp_2"]);
    let r1 = ok(store.response("rsp_1"), "r").unwrap_or_else(|| panic!("rsp_1 is stored"));
    assert_eq!(
        (r1.undone_by.as_deref(), r1.undone_micros, r1.dry_run),
        (Some("usr_admin"), Some(160), false)
    );
    assert!(ok(store.response("rsp_3"), "r").is_some_and(|r| r.dry_run));
}

/// Ops queued at once share group commits: each gets its own answer, a failing or panicking op is
/// rolled back alone, and the leaves of the others are hashed into the tree in order.
fn queued_ops_share_a_commit_and_fail_alone(store: &dyn Store) {
    const N: u8 = 60;
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..N {
        let reply = tx.clone();
        store.submit(
            Box::new(move |t| {
                t.set_meta(&format!("k{i}"), "v")?;
                t.append_audit(
                    &crate::AuditDetail {
                        salt: [i; 16],
                        sealed: Sealed::from_stored(vec![i; 40]),
                    },
                    &[i],
                )?;
                match i % 10 {
                    3 => Err(StoreError::Aborted("op gave up".into())),
                    7 => panic!("op {i} panics"),
                    _ => Ok(()),
                }
            }),
            Box::new(move |r| {
                let _ = reply.send((i, r));
            }),
        );
    }
    drop(tx);
    let mut answers: Vec<_> = rx.iter().collect();
    answers.sort_by_key(|(i, _)| *i);
    assert_eq!(answers.len(), usize::from(N), "one answer per op");
    let mut kept = Vec::new();
    for (i, r) in &answers {
        let stored = ok(store.meta(&format!("k{i}")), "meta");
        match i % 10 {
            3 => assert!(matches!(r, Err(StoreError::Aborted(_))), "op {i}: {r:?}"),
            7 => assert!(matches!(r, Err(StoreError::Backend(_))), "op {i}: {r:?}"),
            _ => {
                assert!(r.is_ok(), "op {i}: {r:?}");
                kept.push(*i);
            }
        }
        assert_eq!(
            stored.is_some(),
            r.is_ok(),
            "op {i}'s writes stay only if it succeeded"
        );
    }
    let size = ok(store.ledger_size(), "size");
    assert_eq!(size, kept.len() as u64);
    let entries = ok(store.ledger_entries(0, size), "entries");
    let mut got: Vec<u8> = entries.iter().map(|(_, e)| e[0]).collect();
    got.sort_unstable();
    assert_eq!(got, kept, "exactly the successful ops' leaves");
    let mut tree = medvault_ledger::MemoryTree::new();
    for (_, e) in &entries {
        tree.push(medvault_ledger::leaf_hash(e));
    }
    assert_eq!(
        medvault_ledger::root(&crate::LedgerNodes(store), size).ok(),
        Some(tree.root()),
        "the stored tree is the tree of the committed leaves"
    );
}

/// The compliance registers: entries replaced by id, listed newest opened first, by kind.
fn compliance_register(store: &dyn Store) {
    let entry = |id: &str, kind: &str, opened: i64| RegisterRow {
        id: id.into(),
        kind: kind.into(),
        subject: (kind != "breach").then(|| "Patient/p1".to_owned()),
        opened_micros: opened,
        due_micros: opened + 100,
        status: "open".into(),
        closed_micros: None,
        updated_micros: opened,
        body: Sealed::from_stored(vec![kind.len() as u8; 40]),
    };
    let (a, b, c) = (
        entry("brc_1", "breach", 10),
        entry("dsr_1", "access", 20),
        entry("dsr_2", "erasure", 30),
    );
    written(store, "put register", move |tx| {
        tx.put_register_entry(&a)?;
        tx.put_register_entry(&b)?;
        tx.put_register_entry(&c)
    });
    let ids = |rows: Vec<RegisterRow>| -> Vec<String> { rows.into_iter().map(|r| r.id).collect() };
    assert_eq!(
        ids(ok(store.register(None), "register")),
        ["dsr_2", "dsr_1", "brc_1"]
    );
    assert_eq!(
        ids(ok(store.register(Some("breach")), "register")),
        ["brc_1"]
    );
    assert!(ok(store.register(Some("objection")), "register").is_empty());
    for (kind, subject, open) in [
        ("access", "Patient/p1", true),
        ("access", "Patient/p2", false),
        ("erasure", "Patient/p1", true),
        ("breach", "Patient/p1", false),
    ] {
        assert_eq!(
            ok(store.register_in_force(kind, subject), "in force"),
            open,
            "{kind} {subject}"
        );
    }
    let mut closed = entry("dsr_1", "access", 20);
    closed.status = "answered".into();
    closed.closed_micros = Some(25);
    closed.updated_micros = 25;
    let c2 = closed.clone();
    written(store, "replace entry", move |tx| tx.put_register_entry(&c2));
    assert_eq!(ok(store.register_entry("dsr_1"), "entry"), Some(closed));
    assert!(!ok(
        store.register_in_force("access", "Patient/p1"),
        "closed"
    ));
    assert_eq!(ok(store.register_entry("dsr_9"), "entry"), None);
    assert_eq!(ok(store.register(None), "register").len(), 3);
}
