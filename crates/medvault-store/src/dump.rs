//! The backend-neutral form of a database's rows, for `medvault backup`, `restore` and
//! `migrate`: every table of a schema version as typed cells, in a fixed order, so that a node
//! moves between SQLite and PostgreSQL (or into a file and back) without re-encrypting
//! anything. Values cross as they are stored: sealed bodies, wrapped keys, blind index values,
//! hashes. Ledger nodes are not dumped: the target's writer hashes the loaded leaves into its
//! own tree, and `ledger verify` then checks it against the signed checkpoints.

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// An integer (booleans are 0 and 1).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 64-bit integer.
    Int,
    /// Text.
    Text,
    /// Bytes.
    Bytes,
    /// Boolean (0 or 1 in a dump).
    Bool,
}

/// A table as dumped: its logical name and columns. Two are logical views rather than stored
/// tables: `current` leaves out the backend's row id, and `idx` names its resource by type
/// and id instead of by row id.
#[derive(Debug)]
pub struct Table {
    /// The table's name.
    pub name: &'static str,
    /// Columns in order, with their types.
    pub columns: &'static [(&'static str, Kind)],
    /// `ORDER BY` clause that makes the dump deterministic.
    pub order: &'static str,
}

impl Table {
    /// The SELECT that reads the table in dump form, the same SQL on both backends (`idx`
    /// joins `current` to name its resources).
    pub fn select(&self) -> String {
        if self.name == "idx" {
            return "SELECT c.rtype, c.id, i.value FROM idx i JOIN current c ON c.rid = i.rid
                    ORDER BY 1, 2, 3"
                .to_owned();
        }
        let cols: Vec<&str> = self.columns.iter().map(|(c, _)| *c).collect();
        format!(
            "SELECT {} FROM {} ORDER BY {}",
            cols.join(", "),
            self.name,
            self.order
        )
    }

    /// Checks a row from an untrusted source (a backup file) against the columns.
    ///
    /// # Errors
    /// A message naming the table and column.
    pub fn check(&self, row: &[Cell]) -> Result<(), String> {
        if row.len() != self.columns.len() {
            return Err(format!(
                "{}: a row has {} values, not {}",
                self.name,
                row.len(),
                self.columns.len()
            ));
        }
        for ((name, kind), cell) in self.columns.iter().zip(row) {
            let fits = match (kind, cell) {
                (_, Cell::Null) | (Kind::Int, Cell::Int(_)) => true,
                (Kind::Bool, Cell::Int(n)) => *n == 0 || *n == 1,
                (Kind::Text, Cell::Text(_)) | (Kind::Bytes, Cell::Bytes(_)) => true,
                _ => false,
            };
            if !fits {
                return Err(format!("{}.{name}: a value of the wrong type", self.name));
            }
        }
        Ok(())
    }
}

use Kind::{Bool, Bytes, Int, Text};

const META: Table = Table {
    name: "meta",
    columns: &[("k", Text), ("v", Text)],
    order: "k",
};
const LEDGER_LEAVES: Table = Table {
    name: "ledger_leaves",
    columns: &[("idx", Int), ("entry", Bytes)],
    order: "idx",
};
const LEDGER_AUDIT: Table = Table {
    name: "ledger_audit",
    columns: &[("leaf", Int), ("salt", Bytes), ("detail", Bytes)],
    order: "leaf",
};
const LEDGER_CHECKPOINTS: Table = Table {
    name: "ledger_checkpoints",
    columns: &[("size", Int), ("note", Text)],
    order: "size",
};
const WITNESSED: Table = Table {
    name: "witnessed",
    columns: &[
        ("origin", Text),
        ("size", Int),
        ("root", Bytes),
        ("note", Text),
    ],
    order: "origin",
};

/// The node database's tables, in load order (`current` before `idx`).
pub const NODE_TABLES: &[Table] = &[
    META,
    Table {
        name: "keks",
        columns: &[("version", Int), ("wrapped", Bytes)],
        order: "version",
    },
    Table {
        name: "deks",
        columns: &[
            ("name", Text),
            ("key_version", Int),
            ("kek_version", Int),
            ("wrapped", Bytes),
        ],
        order: "name",
    },
    Table {
        name: "versions",
        columns: &[
            ("rtype", Text),
            ("id", Text),
            ("version", Int),
            ("last_updated", Int),
            ("key_name", Text),
            ("key_version", Int),
            ("body", Bytes),
            ("salt", Bytes),
            ("leaf", Int),
            ("expunged", Bool),
        ],
        order: "rtype, id, version",
    },
    Table {
        name: "amendments",
        columns: &[
            ("rtype", Text),
            ("id", Text),
            ("version", Int),
            ("seq", Int),
            ("kind", Text),
            ("at", Int),
            ("last_updated", Int),
            ("key_name", Text),
            ("key_version", Int),
            ("digest", Bytes),
            ("leaf", Int),
            ("salt", Bytes),
        ],
        order: "rtype, id, version, seq",
    },
    Table {
        name: "current",
        columns: &[
            ("rtype", Text),
            ("id", Text),
            ("version", Int),
            ("last_updated", Int),
            ("deleted", Bool),
            ("key_name", Text),
            ("shredded", Bool),
        ],
        order: "rtype, id",
    },
    Table {
        name: "idx",
        columns: &[("rtype", Text), ("id", Text), ("value", Bytes)],
        order: "1, 2, 3",
    },
    Table {
        name: "tokens",
        columns: &[
            ("hash", Bytes),
            ("token_id", Text),
            ("role", Text),
            ("created", Int),
            ("expires", Int),
            ("revoked", Int),
            ("last_used", Int),
        ],
        order: "hash",
    },
    Table {
        name: "users",
        columns: &[
            ("id", Text),
            ("name_index", Bytes),
            ("name_sealed", Bytes),
            ("role", Text),
            ("password_hash", Text),
            ("disabled", Bool),
            ("created", Int),
            ("totp", Bytes),
            ("totp_pending", Bytes),
            ("totp_last_step", Int),
            ("failed_logins", Int),
            ("locked_until", Int),
            ("patient_id", Text),
            ("practitioner", Text),
            ("last_login", Int),
        ],
        order: "id",
    },
    Table {
        name: "recovery_codes",
        columns: &[("user_id", Text), ("hash", Bytes)],
        order: "user_id, hash",
    },
    Table {
        name: "sessions",
        columns: &[
            ("hash", Bytes),
            ("session_id", Text),
            ("user_id", Text),
            ("aal", Int),
            ("created", Int),
            ("last_seen", Int),
            ("expires", Int),
        ],
        order: "hash",
    },
    Table {
        name: "oauth_clients",
        columns: &[
            ("client_id", Text),
            ("name", Text),
            ("jwks", Text),
            ("scopes", Text),
            ("disabled", Bool),
            ("created", Int),
            ("redirect_uris", Text),
        ],
        order: "client_id",
    },
    Table {
        name: "oauth_tokens",
        columns: &[
            ("hash", Bytes),
            ("client_id", Text),
            ("scopes", Text),
            ("issued", Int),
            ("expires", Int),
            ("user_id", Text),
            ("family", Text),
        ],
        order: "hash",
    },
    Table {
        name: "oauth_jti",
        columns: &[("client_id", Text), ("jti", Text), ("expires", Int)],
        order: "client_id, jti",
    },
    Table {
        name: "passkeys",
        columns: &[
            ("credential_id", Bytes),
            ("user_id", Text),
            ("passkey", Bytes),
            ("created", Int),
        ],
        order: "credential_id",
    },
    Table {
        name: "oauth_grants",
        columns: &[
            ("hash", Bytes),
            ("kind", Text),
            ("client_id", Text),
            ("user_id", Text),
            ("scopes", Text),
            ("redirect_uri", Text),
            ("code_challenge", Text),
            ("family", Text),
            ("expires", Int),
            ("used", Bool),
        ],
        order: "hash",
    },
    Table {
        name: "break_glass",
        columns: &[
            ("id", Text),
            ("user_id", Text),
            ("patient", Text),
            ("reason", Bytes),
            ("opened", Int),
            ("expires", Int),
        ],
        order: "id",
    },
    Table {
        name: "alerts",
        columns: &[
            ("id", Text),
            ("kind", Text),
            ("at", Int),
            ("user_id", Text),
            ("patient", Text),
            ("detail", Bytes),
            ("acknowledged_by", Text),
            ("acknowledged", Int),
            ("verdict", Text),
            ("note", Bytes),
        ],
        order: "id",
    },
    Table {
        name: "responses",
        columns: &[
            ("id", Text),
            ("alert_id", Text),
            ("action", Text),
            ("subject", Text),
            ("at", Int),
            ("until", Int),
            ("dry_run", Bool),
            ("detail", Text),
            ("undone_by", Text),
            ("undone", Int),
        ],
        order: "id",
    },
    Table {
        name: "register",
        columns: &[
            ("id", Text),
            ("kind", Text),
            ("subject", Text),
            ("opened", Int),
            ("due", Int),
            ("status", Text),
            ("closed", Int),
            ("updated", Int),
            ("body", Bytes),
        ],
        order: "id",
    },
    Table {
        name: "peers",
        columns: &[
            ("node", Text),
            ("fingerprint", Text),
            ("url", Text),
            ("document", Text),
            ("organization", Text),
            ("registered", Int),
            ("registered_by", Text),
        ],
        order: "node",
    },
    Table {
        name: "share_receipts",
        columns: &[
            ("sender", Text),
            ("bundle_id", Text),
            ("receipt", Text),
            ("expires", Int),
        ],
        order: "sender, bundle_id",
    },
    LEDGER_LEAVES,
    LEDGER_AUDIT,
    LEDGER_CHECKPOINTS,
    WITNESSED,
];

/// The access log database's tables, in load order.
pub const LOG_TABLES: &[Table] = &[
    META,
    LEDGER_LEAVES,
    LEDGER_AUDIT,
    LEDGER_CHECKPOINTS,
    WITNESSED,
    Table {
        name: "access_patients",
        columns: &[("tag", Bytes), ("leaf", Int)],
        order: "leaf, tag",
    },
];

/// Receives a dump's rows, table by table in the order of the list given to
/// [`LogStore::dump`](crate::LogStore::dump).
pub type Sink<'a> =
    dyn FnMut(&'static Table, Vec<Cell>) -> Result<(), crate::error::StoreError> + 'a;
