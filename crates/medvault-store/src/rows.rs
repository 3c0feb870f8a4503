//! Rows read back from a database, decoded into the store's types once for every backend.
//!
//! A backend selects the columns in the order a decoder names (the SQL stays in the backend) and
//! lends each row of its driver through [`Columns`]. The accessors keep the driver's own
//! conversions and errors; what the decoders check beyond them (lengths of salts, hashes and
//! blind values, names of amendment kinds and assurance levels, ranges of narrower numbers) is
//! checked here, and reported through [`Columns::malformed`] and [`Columns::out_of_range`] in
//! the backend's own form.

use medvault_core::Aal;
use medvault_crypto::{BLIND_LEN, BlindValue, Sealed, WrappedKey};
use medvault_ledger::{Hash, SALT_LEN};

use crate::{
    AccessTokenRow, AlertRow, Amendment, AmendmentKind, AuditDetail, BreakGlassRow, ClientRow,
    CurrentMeta, DataKeyRow, GrantRow, PeerRow, SessionRow, StoreError, StoredVersion, TokenHash,
    TokenRow, UserRow,
};

/// One row of a query's result, column by column (0-based), as its driver converts the values.
pub trait Columns {
    /// A 64-bit integer.
    ///
    /// # Errors
    /// The driver's, when the column holds something else (or NULL).
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    /// A 64-bit integer or NULL.
    ///
    /// # Errors
    /// The driver's, when the column holds something else.
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    /// Text.
    ///
    /// # Errors
    /// The driver's, when the column holds something else (or NULL).
    fn text(&self, i: usize) -> Result<String, StoreError>;
    /// Text or NULL.
    ///
    /// # Errors
    /// The driver's, when the column holds something else.
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError>;
    /// Bytes.
    ///
    /// # Errors
    /// The driver's, when the column holds something else (or NULL).
    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError>;
    /// Bytes or NULL.
    ///
    /// # Errors
    /// The driver's, when the column holds something else.
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError>;
    /// A boolean (SQLite's 0 and 1, PostgreSQL's `boolean`).
    ///
    /// # Errors
    /// The driver's, when the column holds something else (or NULL).
    fn bool(&self, i: usize) -> Result<bool, StoreError>;
    /// The error for column `i`, read fine but holding a value that means nothing (`why`).
    fn malformed(&self, i: usize, why: Box<dyn std::error::Error + Send + Sync>) -> StoreError;
    /// The error for column `i`, holding `n` where a smaller number belongs.
    fn out_of_range(&self, i: usize, n: i64) -> StoreError;

    /// An integer that fits 32 bits unsigned.
    ///
    /// # Errors
    /// The driver's; [`Self::out_of_range`].
    fn u32(&self, i: usize) -> Result<u32, StoreError> {
        let n = self.int(i)?;
        u32::try_from(n).map_err(|_| self.out_of_range(i, n))
    }
    /// An integer that fits 32 bits unsigned, or NULL.
    ///
    /// # Errors
    /// The driver's; [`Self::out_of_range`].
    fn opt_u32(&self, i: usize) -> Result<Option<u32>, StoreError> {
        self.opt_int(i)?
            .map(|n| u32::try_from(n).map_err(|_| self.out_of_range(i, n)))
            .transpose()
    }
}

/// A stored size or version number; a negative one (never written) reads as 0.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A leaf index as a log's rows hold it; a negative one (never written) reads as the largest,
/// which no caller asks for.
fn leaf_index(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The text of column 0: a setting, a receipt, an owner.
///
/// # Errors
/// The driver's.
pub fn text(r: &dyn Columns) -> Result<String, StoreError> {
    r.text(0)
}

/// A version from `rtype, id, version, last_updated, key_name, key_version, body, shredded,
/// salt, leaf, expunged`. A salt of the wrong length reads as none (verification then fails).
///
/// # Errors
/// The driver's.
pub fn version(r: &dyn Columns) -> Result<StoredVersion, StoreError> {
    Ok(StoredVersion {
        resource_type: r.text(0)?,
        id: r.text(1)?,
        version: count(r.int(2)?),
        last_updated_micros: r.int(3)?,
        key_name: r.text(4)?,
        key_version: r.u32(5)?,
        body: r.opt_bytes(6)?.map(Sealed::from_stored),
        shredded: r.bool(7)?,
        salt: r
            .opt_bytes(8)?
            .and_then(|s| <[u8; SALT_LEN]>::try_from(s.as_slice()).ok()),
        leaf: r.opt_int(9)?.and_then(|l| u64::try_from(l).ok()),
        expunged: r.bool(10)?,
    })
}

/// A version and its scan position: the columns of [`version`], then the position.
///
/// # Errors
/// As [`version`]; "malformed position" for a negative one.
pub fn positioned_version(r: &dyn Columns) -> Result<(u64, StoredVersion), StoreError> {
    let position =
        u64::try_from(r.int(11)?).map_err(|_| r.malformed(11, "malformed position".into()))?;
    Ok((position, version(r)?))
}

/// An amendment from `rtype, id, version, seq, kind, at, last_updated, key_name, key_version,
/// digest, leaf, salt`.
///
/// # Errors
/// The driver's; "malformed amendment row" for an unknown kind, a digest or salt of the wrong
/// length, or a negative leaf.
pub fn amendment(r: &dyn Columns) -> Result<Amendment, StoreError> {
    let bad = |i: usize| r.malformed(i, "malformed amendment row".into());
    Ok(Amendment {
        resource_type: r.text(0)?,
        id: r.text(1)?,
        version: count(r.int(2)?),
        seq: r.u32(3)?,
        kind: AmendmentKind::parse(&r.text(4)?).ok_or_else(|| bad(4))?,
        at_micros: r.int(5)?,
        last_updated_micros: r.int(6)?,
        key_name: r.text(7)?,
        key_version: r.u32(8)?,
        digest: match r.opt_bytes(9)? {
            None => None,
            Some(d) => Some(<Hash>::try_from(d.as_slice()).map_err(|_| bad(9))?),
        },
        leaf: u64::try_from(r.int(10)?).map_err(|_| bad(10))?,
        salt: <[u8; SALT_LEN]>::try_from(r.bytes(11)?.as_slice()).map_err(|_| bad(11))?,
    })
}

/// A KEK from `version, wrapped`.
///
/// # Errors
/// The driver's.
pub fn kek(r: &dyn Columns) -> Result<(u32, WrappedKey), StoreError> {
    Ok((r.u32(0)?, WrappedKey::from_stored(r.bytes(1)?)))
}

/// A data key from `name, key_version, kek_version, wrapped`.
///
/// # Errors
/// The driver's.
pub fn data_key(r: &dyn Columns) -> Result<DataKeyRow, StoreError> {
    Ok(DataKeyRow {
        name: r.text(0)?,
        key_version: r.u32(1)?,
        kek_version: r.opt_u32(2)?,
        wrapped: r.opt_bytes(3)?.map(WrappedKey::from_stored),
    })
}

/// A resource's current state from `version, deleted, key_name`.
///
/// # Errors
/// The driver's.
pub fn current(r: &dyn Columns) -> Result<CurrentMeta, StoreError> {
    Ok(CurrentMeta {
        version: count(r.int(0)?),
        deleted: r.bool(1)?,
        key_name: r.text(2)?,
    })
}

/// A user from `id, name_index, name_sealed, role, password_hash, disabled, created, totp,
/// totp_pending, totp_last_step, failed_logins, locked_until, patient_id, practitioner`.
///
/// # Errors
/// The driver's; "stored name index has the wrong length".
pub fn user(r: &dyn Columns) -> Result<UserRow, StoreError> {
    let index = r.bytes(1)?;
    let sealed = |i: usize| -> Result<Option<Sealed>, StoreError> {
        Ok(r.opt_bytes(i)?.map(Sealed::from_stored))
    };
    Ok(UserRow {
        id: r.text(0)?,
        name_index: BlindValue(
            <[u8; BLIND_LEN]>::try_from(index.as_slice())
                .map_err(|_| r.malformed(1, "stored name index has the wrong length".into()))?,
        ),
        name_sealed: Sealed::from_stored(r.bytes(2)?),
        role: r.text(3)?,
        password_hash: r.text(4)?,
        disabled: r.bool(5)?,
        created_micros: r.int(6)?,
        totp: sealed(7)?,
        totp_pending: sealed(8)?,
        totp_last_step: r.opt_int(9)?.and_then(|n| u64::try_from(n).ok()),
        failed_logins: r.u32(10)?,
        locked_until_micros: r.int(11)?,
        patient_id: r.opt_text(12)?,
        practitioner: r.opt_text(13)?,
        last_login_micros: r.opt_int(14)?,
    })
}

/// The session whose token hashes to `hash`, from `session_id, user_id, aal, created,
/// last_seen, expires`.
///
/// # Errors
/// The driver's; an assurance level no [`Aal`] has (the error names it).
pub fn session(r: &dyn Columns, hash: &TokenHash) -> Result<SessionRow, StoreError> {
    Ok(SessionRow {
        hash: *hash,
        session_id: r.text(0)?,
        user_id: r.text(1)?,
        aal: Aal::from_level(r.int(2)?).map_err(|e| r.malformed(2, Box::new(e)))?,
        created_micros: r.int(3)?,
        last_seen_micros: r.int(4)?,
        expires_micros: r.int(5)?,
    })
}

/// A client from `client_id, name, jwks, scopes, disabled, created, redirect_uris` (one URI a
/// line).
///
/// # Errors
/// The driver's.
pub fn client(r: &dyn Columns) -> Result<ClientRow, StoreError> {
    Ok(ClientRow {
        client_id: r.text(0)?,
        name: r.text(1)?,
        jwks: r.text(2)?,
        scopes: r.text(3)?,
        disabled: r.bool(4)?,
        created_micros: r.int(5)?,
        redirect_uris: r.text(6)?.lines().map(str::to_owned).collect(),
    })
}

/// A peer from `node, fingerprint, url, document, organization, registered, registered_by`.
///
/// # Errors
/// The driver's.
pub fn peer(r: &dyn Columns) -> Result<PeerRow, StoreError> {
    Ok(PeerRow {
        node: r.text(0)?,
        fingerprint: r.text(1)?,
        url: r.text(2)?,
        document: r.text(3)?,
        organization: r.opt_text(4)?,
        registered_micros: r.int(5)?,
        registered_by: r.text(6)?,
    })
}

/// The grant whose hash is `hash`, from `kind, client_id, user_id, scopes, redirect_uri,
/// code_challenge, family, expires, used`.
///
/// # Errors
/// The driver's.
pub fn grant(r: &dyn Columns, hash: &TokenHash) -> Result<GrantRow, StoreError> {
    Ok(GrantRow {
        hash: *hash,
        kind: r.text(0)?,
        client_id: r.text(1)?,
        user_id: r.text(2)?,
        scopes: r.text(3)?,
        redirect_uri: r.text(4)?,
        code_challenge: r.text(5)?,
        family: r.text(6)?,
        expires_micros: r.int(7)?,
        used: r.bool(8)?,
    })
}

/// The access token whose hash is `hash`, from `client_id, scopes, issued, expires, user_id,
/// family`.
///
/// # Errors
/// The driver's.
pub fn access_token(r: &dyn Columns, hash: &TokenHash) -> Result<AccessTokenRow, StoreError> {
    Ok(AccessTokenRow {
        hash: *hash,
        client_id: r.text(0)?,
        scopes: r.text(1)?,
        issued_micros: r.int(2)?,
        expires_micros: r.int(3)?,
        user_id: r.opt_text(4)?,
        family: r.opt_text(5)?,
    })
}

/// A passkey from `credential_id, passkey`.
///
/// # Errors
/// The driver's.
pub fn passkey(r: &dyn Columns) -> Result<(Vec<u8>, Sealed), StoreError> {
    Ok((r.bytes(0)?, Sealed::from_stored(r.bytes(1)?)))
}

/// The break-glass grant of `user_id` for `patient`, from `id, reason, opened, expires`.
///
/// # Errors
/// The driver's.
pub fn break_glass(
    r: &dyn Columns,
    user_id: &str,
    patient: &str,
) -> Result<BreakGlassRow, StoreError> {
    Ok(BreakGlassRow {
        id: r.text(0)?,
        user_id: user_id.to_owned(),
        patient: patient.to_owned(),
        reason: Sealed::from_stored(r.bytes(1)?),
        opened_micros: r.int(2)?,
        expires_micros: r.int(3)?,
    })
}

/// An alert from `id, kind, at, user_id, patient, detail, acknowledged_by, acknowledged,
/// verdict, note` ([`ALERT_COLUMNS`]).
///
/// # Errors
/// The driver's.
pub fn alert(r: &dyn Columns) -> Result<AlertRow, StoreError> {
    Ok(AlertRow {
        id: r.text(0)?,
        kind: r.text(1)?,
        at_micros: r.int(2)?,
        user_id: r.text(3)?,
        patient: r.opt_text(4)?,
        detail: Sealed::from_stored(r.bytes(5)?),
        acknowledged_by: r.opt_text(6)?,
        acknowledged_micros: r.opt_int(7)?,
        verdict: r.opt_text(8)?,
        note: r.opt_bytes(9)?.map(Sealed::from_stored),
    })
}

/// The columns [`alert`] reads, in its order.
pub const ALERT_COLUMNS: &str =
    "id, kind, at, user_id, patient, detail, acknowledged_by, acknowledged, verdict, note";

/// The columns [`response`] reads, in its order.
pub const RESPONSE_COLUMNS: &str =
    "id, alert_id, action, subject, at, until, dry_run, detail, undone_by, undone";

/// A response from [`RESPONSE_COLUMNS`].
///
/// # Errors
/// The driver's.
pub fn response(r: &dyn Columns) -> Result<crate::ResponseRow, StoreError> {
    Ok(crate::ResponseRow {
        id: r.text(0)?,
        alert_id: r.text(1)?,
        action: r.text(2)?,
        subject: r.text(3)?,
        at_micros: r.int(4)?,
        until_micros: r.opt_int(5)?,
        dry_run: r.bool(6)?,
        detail: r.text(7)?,
        undone_by: r.opt_text(8)?,
        undone_micros: r.opt_int(9)?,
    })
}

/// The columns [`register_entry`] reads, in its order.
pub const REGISTER_COLUMNS: &str = "id, kind, subject, opened, due, status, closed, updated, body";

/// A compliance register entry from [`REGISTER_COLUMNS`].
///
/// # Errors
/// The driver's.
pub fn register_entry(r: &dyn Columns) -> Result<crate::RegisterRow, StoreError> {
    Ok(crate::RegisterRow {
        id: r.text(0)?,
        kind: r.text(1)?,
        subject: r.opt_text(2)?,
        opened_micros: r.int(3)?,
        due_micros: r.int(4)?,
        status: r.text(5)?,
        closed_micros: r.opt_int(6)?,
        updated_micros: r.int(7)?,
        body: Sealed::from_stored(r.bytes(8)?),
    })
}

/// An API token from `role, token_id, created, expires, revoked, last_used`.
///
/// # Errors
/// The driver's.
pub fn token(r: &dyn Columns) -> Result<TokenRow, StoreError> {
    Ok(TokenRow {
        role: r.text(0)?,
        token_id: r.text(1)?,
        created_micros: r.int(2)?,
        expires_micros: r.int(3)?,
        revoked_micros: r.opt_int(4)?,
        last_used_micros: r.opt_int(5)?,
    })
}

/// A stored tree node from `idx, hash`, as [`contiguous_nodes`](crate::group::contiguous_nodes)
/// takes it.
///
/// # Errors
/// The driver's.
pub fn ledger_node(r: &dyn Columns) -> Result<(i64, Vec<u8>), StoreError> {
    Ok((r.int(0)?, r.bytes(1)?))
}

/// A log leaf from `idx, entry`.
///
/// # Errors
/// The driver's.
pub fn ledger_entry(r: &dyn Columns) -> Result<(u64, Vec<u8>), StoreError> {
    Ok((leaf_index(r.int(0)?), r.bytes(1)?))
}

/// An audit detail from `leaf, salt, detail`. A malformed salt is kept visible to verification
/// as an all-zero salt, which cannot match the commitment.
///
/// # Errors
/// The driver's.
pub fn audit_detail(r: &dyn Columns) -> Result<(u64, AuditDetail), StoreError> {
    let salt = <[u8; SALT_LEN]>::try_from(r.bytes(1)?.as_slice()).unwrap_or([0; SALT_LEN]);
    Ok((
        leaf_index(r.int(0)?),
        AuditDetail {
            salt,
            sealed: Sealed::from_stored(r.bytes(2)?),
        },
    ))
}

/// A leaf index from column 0 (`leaf`).
///
/// # Errors
/// The driver's.
pub fn leaf(r: &dyn Columns) -> Result<u64, StoreError> {
    Ok(leaf_index(r.int(0)?))
}

/// A patient-index row from `leaf, tag`.
///
/// # Errors
/// The driver's; "stored patient tag has the wrong length".
pub fn access_tag(r: &dyn Columns) -> Result<(u64, BlindValue), StoreError> {
    let tag = r.bytes(1)?;
    Ok((
        leaf_index(r.int(0)?),
        BlindValue(
            <[u8; BLIND_LEN]>::try_from(tag.as_slice())
                .map_err(|_| r.malformed(1, "stored patient tag has the wrong length".into()))?,
        ),
    ))
}

/// A checkpoint from `size, note`.
///
/// # Errors
/// The driver's.
pub fn checkpoint(r: &dyn Columns) -> Result<(u64, String), StoreError> {
    Ok((count(r.int(0)?), r.text(1)?))
}

/// A witnessed log's state from `size, root`.
///
/// # Errors
/// The driver's; "witnessed root is not 32 bytes".
pub fn witnessed(r: &dyn Columns) -> Result<(u64, Hash), StoreError> {
    let size = count(r.int(0)?);
    let root = <Hash>::try_from(r.bytes(1)?.as_slice())
        .map_err(|_| StoreError::Backend("witnessed root is not 32 bytes".into()))?;
    Ok((size, root))
}
