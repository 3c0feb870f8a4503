//! A medvault node on disk: its data directory, key file, database and key ring.
//!
//! Layout of the data directory (mode 0700):
//! - `medvault.key` — the root key file (mode 0600), sealed with `MEDVAULT_PASSPHRASE` when set;
//! - `medvault.db` (+ `-wal`, `-shm`) — the SQLite database: only sealed records, blind index
//!   values, wrapped keys, token hashes and the records log;
//! - `access.db` (+ `-wal`, `-shm`) — the access log: an audit leaf and a sealed detail for every
//!   request and administrative action, in a file of its own so that its commit per request never
//!   disturbs the records database's readers.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use medvault_core::{KeyName, ResourceType};
use medvault_crypto::{
    BlindIndexer, BlindValue, CryptoError, DataKey, Kek, KeyFileKind, ParamKey, Passphrase,
    RootKey, WrappedKey,
};
use medvault_fhir::Fhir;
use medvault_store::{
    Databases, LogStore, Store, StoreError, StoreRead, StoreTx, write_log_with, write_with,
};

use crate::audit::AuditRecord;
use crate::clock::{Clock, SystemClock};
use crate::error::Error;
use crate::ledger::{
    ACCESS_LOG_KEY, AUDIT_KEY, LEDGER_KEY, LEDGER_PQ_KEY, Ledger, LedgerSeeds, LogId, WITNESS_KEY,
};

/// Name of the key file inside the data directory.
pub const KEY_FILE: &str = "medvault.key";
/// Data key that seals resources outside every patient compartment.
pub const TENANT_KEY: &KeyName = &KeyName::TENANT;
/// Data key from which blind-index keys are derived.
pub const INDEX_KEY: &KeyName = &KeyName::node("@index");
/// Unwrapped data keys one generation of the cache holds: the keys used since the last turn
/// stay, at most twice this many in all (about 8 MB), the rest are unwrapped again when needed.
const MAX_CACHED_KEYS: usize = 32_768;

/// Errors opening a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory could not be created or read.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file could not be opened.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: CryptoError,
    },
    /// The database failed.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The access log's database is missing or belongs to another node.
    #[error("access log {0}")]
    AccessLog(&'static str),
    /// A key stored in the database does not open with this node's root key.
    #[error("stored key {0} does not open with this key file: wrong key file for this database?")]
    KeyMismatch(String),
    /// The FHIR definitions failed to load.
    #[error("FHIR definitions: {0}")]
    Fhir(#[from] medvault_fhir::FhirError),
    /// A restore or migration into this database did not finish.
    #[error(
        "the database holds an unfinished restore or migration: run it again with --force (or restore another backup)"
    )]
    IncompleteTransfer,
    /// The database holds a node, but the data directory has no key file for it.
    #[error(
        "the database already holds a node, but {0} is missing: copy the key file from a data directory of that node (every process of a node needs the same key file)"
    )]
    KeyFileMissing(PathBuf),
}

/// `meta` key set to `incomplete` while `medvault restore` or `migrate` loads a database (and
/// to `complete` when done): a node does not open on a half-loaded database.
pub const TRANSFER_META: &str = "transfer";

/// A `Type/id` (or data-key name) fit for logs: the id, which a client may have chosen (an MRN,
/// say), is replaced by a short hash.
pub fn redacted(name: &str) -> String {
    match name.split_once('/') {
        Some((ty, id)) => format!(
            "{ty}/#{}",
            hex::encode(&medvault_crypto::sha256(id.as_bytes())[..6])
        ),
        None => name.to_owned(),
    }
}

/// Errors reaching a data key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key was destroyed (the patient was erased).
    #[error("the data key was destroyed")]
    Shredded,
    /// The key or a KEK is missing or does not open.
    #[error("key {0} is missing or does not open")]
    Broken(String),
    /// The database failed.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// Random generation failed.
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
}

/// A data-key name as the key ring's readers take it: a [`KeyName`], or the text of one read back
/// with a stored version, checked only when the store must be reached, so a cached key is found
/// without allocating. (Writers always hold a [`KeyName`].)
pub trait AsKeyName {
    /// The name's text, which the ring's cache is keyed by.
    fn key_text(&self) -> &str;
    /// The checked name: borrowed when it already is a [`KeyName`].
    ///
    /// # Errors
    /// [`KeyError::Broken`] when the text is not a data-key name.
    fn to_key_name(&self) -> Result<Cow<'_, KeyName>, KeyError>;
}

impl AsKeyName for KeyName {
    fn key_text(&self) -> &str {
        self.as_str()
    }

    fn to_key_name(&self) -> Result<Cow<'_, KeyName>, KeyError> {
        Ok(Cow::Borrowed(self))
    }
}

impl AsKeyName for str {
    fn key_text(&self) -> &str {
        self
    }

    fn to_key_name(&self) -> Result<Cow<'_, KeyName>, KeyError> {
        KeyName::parse(self)
            .map(Cow::Owned)
            .map_err(|_| KeyError::Broken(redacted(self)))
    }
}

impl AsKeyName for String {
    fn key_text(&self) -> &str {
        self
    }

    fn to_key_name(&self) -> Result<Cow<'_, KeyName>, KeyError> {
        self.as_str().to_key_name()
    }
}

/// Unwrapped data keys in two generations: new and used keys go into the current one; when it
/// is full it becomes the previous one (the one before is dropped), and a key found in the
/// previous generation moves back to the current. Keys in use stay; memory stays bounded.
#[derive(Default)]
struct KeyCache {
    current: HashMap<String, (Arc<DataKey>, WrappedKey)>,
    previous: HashMap<String, (Arc<DataKey>, WrappedKey)>,
}

impl KeyCache {
    /// The key named `name`, and whether it was found in the previous generation.
    fn get(&self, name: &str) -> Option<((Arc<DataKey>, WrappedKey), bool)> {
        if let Some(k) = self.current.get(name) {
            return Some((k.clone(), false));
        }
        self.previous.get(name).map(|k| (k.clone(), true))
    }

    fn insert(&mut self, name: String, key: (Arc<DataKey>, WrappedKey)) {
        if self.current.len() >= MAX_CACHED_KEYS && !self.current.contains_key(&name) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.previous.remove(&name);
        self.current.insert(name, key);
    }

    fn remove(&mut self, name: &str) {
        self.current.remove(name);
        self.previous.remove(name);
    }
}

/// The node's keys: the root key, KEKs and unwrapped data keys it has used.
pub struct KeyRing {
    tenant: String,
    root: RootKey,
    keks: RwLock<BTreeMap<u32, Arc<Kek>>>,
    data_keys: RwLock<KeyCache>,
    indexer: OnceLock<BlindIndexer>,
    param_keys: RwLock<HashMap<(String, String), Arc<ParamKey>>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// The tenant bound into every ciphertext.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The KEK with this version, loading it from the store on first use.
    ///
    /// # Errors
    /// [`KeyError::Broken`] if it is missing or does not open.
    pub fn kek(&self, store: &dyn StoreRead, version: u32) -> Result<Arc<Kek>, KeyError> {
        if let Some(k) = self.keks.read().ok().and_then(|m| m.get(&version).cloned()) {
            return Ok(k);
        }
        let wrapped = store
            .keks()?
            .into_iter()
            .find(|(v, _)| *v == version)
            .map(|(_, w)| w)
            .ok_or_else(|| KeyError::Broken(format!("KEK v{version}")))?;
        let kek = Arc::new(
            self.root
                .unwrap_kek(&self.tenant, version, &wrapped)
                .map_err(|_| KeyError::Broken(format!("KEK v{version}")))?,
        );
        if let Ok(mut m) = self.keks.write() {
            m.insert(version, Arc::clone(&kek));
        }
        Ok(kek)
    }

    /// The newest KEK in the store (new data keys are wrapped by it).
    ///
    /// # Errors
    /// [`KeyError::Broken`] when the store has no KEK.
    pub fn newest_kek(&self, store: &dyn StoreRead) -> Result<Arc<Kek>, KeyError> {
        let newest = store
            .keks()?
            .last()
            .map(|(v, _)| *v)
            .ok_or_else(|| KeyError::Broken("KEK".into()))?;
        self.kek(store, newest)
    }

    /// Wraps a fresh KEK with the root key (for rotation).
    ///
    /// # Errors
    /// RNG failure.
    pub fn wrap_new_kek(&self, kek: &Kek) -> Result<medvault_crypto::WrappedKey, KeyError> {
        Ok(self.root.wrap_kek(&self.tenant, kek)?)
    }

    fn cached(&self, name: &str) -> Option<(Arc<DataKey>, WrappedKey)> {
        let found = self.data_keys.read().ok()?.get(name)?;
        if let (true, Ok(mut m)) = (found.1, self.data_keys.write()) {
            // Used again since the last turn: it moves to the new generation.
            m.insert(name.to_owned(), found.0.clone());
        }
        Some(found.0)
    }

    fn remember(&self, key: DataKey, wrapped: WrappedKey) -> Arc<DataKey> {
        let key = Arc::new(key);
        if let Ok(mut m) = self.data_keys.write() {
            m.insert(key.name().to_owned(), (Arc::clone(&key), wrapped));
        }
        key
    }

    /// Forgets a data key (after it was destroyed).
    pub fn forget(&self, name: &str) {
        if let Ok(mut m) = self.data_keys.write() {
            m.remove(name);
        }
    }

    /// Unwraps a stored data key (not cached), with the wrapped bytes it came from.
    fn load(
        &self,
        store: &dyn StoreRead,
        name: &KeyName,
    ) -> Result<Option<(DataKey, WrappedKey)>, KeyError> {
        let Some(row) = store.data_key(name)? else {
            return Ok(None);
        };
        let (Some(kek_version), Some(wrapped)) = (row.kek_version, row.wrapped) else {
            return Err(KeyError::Shredded);
        };
        let kek = self.kek(store, kek_version)?;
        let key = kek
            .unwrap(&self.tenant, name.as_str(), row.key_version, &wrapped)
            .map_err(|_| KeyError::Broken(redacted(name.as_str())))?;
        Ok(Some((key, wrapped)))
    }

    /// The data key for reading a version sealed under `name`. The caller has already checked
    /// the version's `shredded` flag, which the store derives from the key row.
    ///
    /// # Errors
    /// [`KeyError::Shredded`] or [`KeyError::Broken`].
    pub fn for_read(
        &self,
        store: &dyn StoreRead,
        name: &(impl AsKeyName + ?Sized),
    ) -> Result<Arc<DataKey>, KeyError> {
        if let Some((k, _)) = self.cached(name.key_text()) {
            return Ok(k);
        }
        self.reload(store, name)
    }

    /// Reads the data key from the store again, replacing the cached one. Used when a cached key
    /// fails to open a record: another process may have created the committed key while this one
    /// cached a key whose transaction rolled back.
    ///
    /// # Errors
    /// [`KeyError::Shredded`] or [`KeyError::Broken`].
    pub fn reload(
        &self,
        store: &dyn StoreRead,
        name: &(impl AsKeyName + ?Sized),
    ) -> Result<Arc<DataKey>, KeyError> {
        let key_name = name.to_key_name()?;
        match self.load(store, &key_name)? {
            Some((k, w)) => Ok(self.remember(k, w)),
            None => Err(KeyError::Broken(redacted(name.key_text()))),
        }
    }

    /// Replaces the data key `name` with a fresh one of the next version (wrapped by the newest
    /// KEK), inside the write transaction; the old one is gone once it commits. For keys that
    /// seal nothing stored (signing and KEM seeds): a record key renewed this way would leave
    /// its records unreadable.
    ///
    /// # Errors
    /// [`KeyError::Shredded`] if the key was destroyed.
    pub fn renew(&self, tx: &mut dyn StoreTx, name: &KeyName) -> Result<Arc<DataKey>, KeyError> {
        let next = match tx.data_key(name)? {
            Some(row) if row.wrapped.is_none() => return Err(KeyError::Shredded),
            Some(row) => row.key_version.saturating_add(1),
            None => 1,
        };
        self.create(tx, name, next)
    }

    /// Makes version `version` of data key `name`, wrapped by the newest KEK, stores it inside
    /// the write transaction and caches it.
    fn create(
        &self,
        tx: &mut dyn StoreTx,
        name: &KeyName,
        version: u32,
    ) -> Result<Arc<DataKey>, KeyError> {
        let kek = self.newest_kek(&*tx)?;
        let key = DataKey::generate(name.as_str().to_owned(), version)?;
        let wrapped = kek.wrap(&self.tenant, &key)?;
        tx.put_data_key(name, key.version(), kek.version(), &wrapped)?;
        Ok(self.remember(key, wrapped))
    }

    /// The data key for writing into compartment `name`, created (and wrapped by the newest
    /// KEK) inside the write transaction if it does not exist yet.
    ///
    /// # Errors
    /// [`KeyError::Shredded`] if the compartment was erased.
    pub fn for_write(
        &self,
        tx: &mut dyn StoreTx,
        name: &KeyName,
    ) -> Result<Arc<DataKey>, KeyError> {
        match tx.data_key(name)? {
            Some(row) if row.wrapped.is_none() => {
                self.forget(name.as_str());
                Err(KeyError::Shredded)
            }
            Some(row) => match self.cached(name.as_str()) {
                // Only a cached key whose wrapped bytes are the committed row's may seal: a key
                // generated in a transaction that rolled back never matches.
                Some((k, w)) if row.wrapped.as_ref() == Some(&w) => Ok(k),
                _ => self
                    .load(&*tx, name)?
                    .map(|(k, w)| self.remember(k, w))
                    .ok_or_else(|| KeyError::Broken(redacted(name.as_str()))),
            },
            None => self.create(tx, name, 1),
        }
    }

    /// The blind-index key of one parameter of `resource_type` (a FHIR type's name, or the
    /// name of one of the node's own indexes such as `@user`).
    ///
    /// # Errors
    /// Only if HKDF fails (it cannot for these lengths).
    pub fn param_key(&self, resource_type: &str, param: &str) -> Result<Arc<ParamKey>, KeyError> {
        let id = (resource_type.to_owned(), param.to_owned());
        if let Some(k) = self
            .param_keys
            .read()
            .ok()
            .and_then(|m| m.get(&id).cloned())
        {
            return Ok(k);
        }
        let indexer = self
            .indexer
            .get()
            .ok_or_else(|| KeyError::Broken(INDEX_KEY.to_string()))?;
        let k = Arc::new(indexer.param_key(resource_type, param)?);
        if let Ok(mut m) = self.param_keys.write() {
            m.insert(id, Arc::clone(&k));
        }
        Ok(k)
    }

    /// Blinds plaintext index keys of one parameter.
    ///
    /// # Errors
    /// As [`Self::param_key`].
    pub fn blind<'a>(
        &self,
        resource_type: &ResourceType,
        param: &str,
        keys: impl IntoIterator<Item = &'a Vec<u8>>,
    ) -> Result<Vec<BlindValue>, KeyError> {
        let k = self.param_key(resource_type.as_str(), param)?;
        Ok(keys.into_iter().map(|x| k.blind(x)).collect())
    }
}

/// Everything a command needs to work on a node.
pub struct Node {
    /// The records database (keys, records, indexes, tokens, the records log).
    pub store: Arc<dyn Store>,
    /// The access log's database: a log and nothing else, by type.
    pub access: Arc<dyn LogStore>,
    /// The keys.
    pub keys: Arc<KeyRing>,
    /// FHIR definitions.
    pub fhir: Arc<Fhir>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// The ledger's keys and identity.
    pub ledger: Arc<Ledger>,
    /// How the key file is protected.
    pub key_file_kind: KeyFileKind,
    /// True when this call created the node.
    pub created: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Writes `bytes` to a file readable by its owner only (mode 0600 on Unix), replacing it.
///
/// # Errors
/// I/O errors.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o.open(path).and_then(|mut f| f.write_all(bytes))
}

fn create_dir_private(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Opens the data directory's key file, or creates a new one when the
/// database holds no node yet (`data_exists` false); `missing` is the error when the data is
/// there but the key file is not. Returns the key file's path, the key, its kind, and whether
/// it was created now.
fn key_file(
    data_dir: &Path,
    passphrase: Option<&Passphrase>,
    data_exists: bool,
    missing: impl FnOnce(PathBuf) -> NodeError,
) -> Result<(PathBuf, RootKey, KeyFileKind, bool), NodeError> {
    let key_path = data_dir.join(KEY_FILE);
    let key_err = |source| NodeError::KeyFile {
        path: key_path.clone(),
        source,
    };
    if key_path.exists() {
        let (root, kind) = RootKey::open_file(&key_path, passphrase).map_err(key_err)?;
        return Ok((key_path, root, kind, false));
    }
    if data_exists {
        return Err(missing(key_path));
    }
    let root = RootKey::create_file(&key_path, passphrase).map_err(key_err)?;
    let kind = if passphrase.is_some() {
        KeyFileKind::Passphrase
    } else {
        KeyFileKind::Unprotected
    };
    Ok((key_path, root, kind, true))
}

impl Node {
    /// Opens the node whose key file is in `data_dir` and whose data is in `databases` (the
    /// binary picks the backend), creating what does not exist yet: directory, key file
    /// (sealed with `passphrase` when given), database and first keys. On a shared backend
    /// (PostgreSQL) the first process creates the node; the others need a copy of its key file.
    ///
    /// # Errors
    /// [`NodeError`] naming what failed.
    pub fn open(
        data_dir: &Path,
        databases: &dyn Databases,
        passphrase: Option<&Passphrase>,
    ) -> Result<Self, NodeError> {
        create_dir_private(data_dir).map_err(|source| NodeError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        // The key file first: a wrong passphrase or a damaged key file must not create or
        // migrate a database.
        let exists = databases.node_exists()?;
        let shared = databases.shared();
        let (key_path, root, kind, created) = key_file(data_dir, passphrase, exists, |path| {
            if shared {
                NodeError::KeyFileMissing(path)
            } else {
                NodeError::KeyFile {
                    path,
                    source: CryptoError::KeyFile(
                        "missing, but the database exists: restore the key file that belongs to it",
                    ),
                }
            }
        })?;
        let store = databases.open_node()?;
        if exists && !databases.access_log_exists()? {
            // A fresh, empty access log would silently forget who accessed what.
            return Err(NodeError::AccessLog(databases.missing_access_log()));
        }
        let access = databases.open_access_log()?;
        let opened = Self::with_stores(store, access, root, kind, created);
        if shared && created && matches!(opened, Err(NodeError::KeyMismatch(_))) {
            // Another process created the node at the same moment with its own key file; the
            // one made here opens nothing, so it must not stay to fail every later start.
            let _ = std::fs::remove_file(&key_path);
            return Err(NodeError::KeyFileMissing(key_path));
        }
        opened
    }

    /// The store holding `log`.
    pub fn log_store(&self, log: LogId) -> Arc<dyn LogStore> {
        match log {
            LogId::Records => Arc::clone(&self.store) as Arc<dyn LogStore>,
            LogId::Access => Arc::clone(&self.access),
        }
    }

    /// Records in the access log, in its own durable write, what `record` makes of the current
    /// time (the record's time and its leaf's). Returns the leaf index.
    ///
    /// # Errors
    /// Store failures, RNG failure.
    pub fn record_audit_now(&self, record: impl FnOnce(i64) -> AuditRecord) -> Result<u64, Error> {
        let now = self.clock.now_micros();
        self.ledger
            .record_audit(self.access.as_ref(), now, &record(now))
    }

    /// [`Self::record_audit_now`] without holding a thread: resolves once the leaf is committed.
    ///
    /// # Errors
    /// Store failures, RNG failure.
    pub async fn record_audit_now_async(
        &self,
        record: impl FnOnce(i64) -> AuditRecord,
    ) -> Result<u64, Error> {
        let now = self.clock.now_micros();
        self.ledger
            .record_audit_async(self.access.as_ref(), now, &record(now))
            .await
    }

    /// Opens a node over already-open stores: the records database and the access log's
    /// (used by tests and other backends).
    ///
    /// # Errors
    /// [`NodeError`].
    pub fn with_stores(
        store: Arc<dyn Store>,
        access: Arc<dyn LogStore>,
        root: RootKey,
        key_file_kind: KeyFileKind,
        created: bool,
    ) -> Result<Self, NodeError> {
        if store.meta(TRANSFER_META)?.as_deref() == Some("incomplete") {
            return Err(NodeError::IncompleteTransfer);
        }
        let tenant = match store.meta("tenant")? {
            Some(t) => t,
            None => {
                // First start: tenant id, KEK v1, tenant and index data keys, in one transaction.
                let tenant = uuid::Uuid::new_v4().to_string();
                let kek = Kek::generate(1)
                    .map_err(|e| NodeError::Store(StoreError::Backend(Box::new(e))))?;
                let wrapped_kek = root
                    .wrap_kek(&tenant, &kek)
                    .map_err(|e| NodeError::Store(StoreError::Backend(Box::new(e))))?;
                let mut wrapped = Vec::new();
                for name in [TENANT_KEY, INDEX_KEY] {
                    let k = DataKey::generate(name.as_str().to_owned(), 1)
                        .map_err(|e| NodeError::Store(StoreError::Backend(Box::new(e))))?;
                    let w = kek
                        .wrap(&tenant, &k)
                        .map_err(|e| NodeError::Store(StoreError::Backend(Box::new(e))))?;
                    wrapped.push((name, w));
                }
                let t = tenant.clone();
                // When KEK version 1 was made (the compliance report ages the current KEK).
                let created = i64::try_from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros()),
                )
                .unwrap_or(0);
                write_with(store.as_ref(), move |tx| {
                    if tx.meta("tenant")?.is_some() {
                        return Ok(()); // another process initialised it first
                    }
                    tx.set_meta("tenant", &t)?;
                    tx.add_kek(1, &wrapped_kek)?;
                    tx.set_meta(&crate::admin::kek_created_meta(1), &created.to_string())?;
                    for (name, w) in &wrapped {
                        tx.put_data_key(name, 1, 1, w)?;
                    }
                    Ok(())
                })?;
                store
                    .meta("tenant")?
                    .ok_or_else(|| NodeError::KeyMismatch("tenant".into()))?
            }
        };
        let ring = KeyRing {
            tenant,
            root,
            keks: RwLock::new(BTreeMap::new()),
            data_keys: RwLock::new(KeyCache::default()),
            indexer: OnceLock::new(),
            param_keys: RwLock::new(HashMap::new()),
        };
        let (index_key, _) = ring
            .load(store.as_ref(), INDEX_KEY)
            .map_err(|_| NodeError::KeyMismatch(INDEX_KEY.to_string()))?
            .ok_or_else(|| NodeError::KeyMismatch(INDEX_KEY.to_string()))?;
        let _ = ring.indexer.set(BlindIndexer::new(&index_key));
        let ring = Arc::new(ring);
        let ledger = Arc::new(open_ledger(store.as_ref(), &ring)?);
        bind_access_log(access.as_ref(), ring.tenant())?;
        Ok(Self {
            store,
            access,
            ledger,
            keys: ring,
            fhir: Arc::new(Fhir::load()?),
            clock: Arc::new(SystemClock),
            key_file_kind,
            created,
        })
    }
}

/// Loads (creating on first start) the ledger's keys and origin.
fn open_ledger(store: &dyn Store, ring: &Arc<KeyRing>) -> Result<Ledger, NodeError> {
    let r = Arc::clone(ring);
    let (origin, audit, seeds) = write_with(store, move |tx| {
        let broken = |e: KeyError| StoreError::Backend(Box::new(e));
        let audit = r.for_write(tx, AUDIT_KEY).map_err(broken)?;
        let mut seeds = Vec::new();
        for name in [LEDGER_KEY, ACCESS_LOG_KEY, WITNESS_KEY, LEDGER_PQ_KEY] {
            seeds.push(r.for_write(tx, name).map_err(broken)?);
        }
        let origin = match tx.meta("ledger_origin")? {
            Some(o) => o,
            None => {
                let o = format!("medvault.local/{}", r.tenant());
                tx.set_meta("ledger_origin", &o)?;
                o
            }
        };
        Ok((origin, audit, seeds))
    })?;
    let [records, access, witness, pq] = seeds.as_slice() else {
        return Err(NodeError::KeyMismatch(LEDGER_KEY.to_string()));
    };
    let seeds = LedgerSeeds {
        records,
        access,
        witness,
        pq,
    };
    Ledger::new(&origin, &seeds, audit, ring.tenant().to_owned())
        .map_err(|_| NodeError::KeyMismatch(LEDGER_KEY.to_string()))
}

/// Records the tenant in a new access log, or checks an existing one belongs to this node.
fn bind_access_log(access: &dyn LogStore, tenant: &str) -> Result<(), NodeError> {
    let t = tenant.to_owned();
    let found = write_log_with(access, move |tx| match tx.meta("tenant")? {
        Some(found) => Ok(found),
        None => {
            tx.set_meta("tenant", &t)?;
            Ok(t)
        }
    })?;
    if found == tenant {
        Ok(())
    } else {
        Err(NodeError::AccessLog("access.db belongs to another node"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medvault_store_sqlite::Embedded;

    #[test]
    fn the_key_cache_keeps_keys_in_use_and_stays_bounded() {
        let mut cache = KeyCache::default();
        let entry = |name: &str| {
            let k = DataKey::generate(name.to_owned(), 1).unwrap();
            (Arc::new(k), WrappedKey::from_stored(vec![0; 40]))
        };
        cache.insert("Patient/hot".into(), entry("Patient/hot"));
        for round in 0..3 {
            for i in 0..MAX_CACHED_KEYS {
                let name = format!("Patient/{round}-{i}");
                cache.insert(name.clone(), entry(&name));
                if i % 1000 == 0 {
                    // The hot key is used now and then: it moves back to the current generation.
                    let (k, old) = cache.get("Patient/hot").expect("a key in use stays");
                    if old {
                        cache.insert("Patient/hot".into(), k);
                    }
                }
            }
            assert!(cache.current.len() + cache.previous.len() <= 2 * MAX_CACHED_KEYS);
        }
        assert!(cache.get("Patient/0-5").is_none(), "an unused key went");
        cache.remove("Patient/hot");
        assert!(cache.get("Patient/hot").is_none());
    }

    #[test]
    fn a_node_refuses_to_open_without_its_access_log_or_its_key_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let db = Embedded::new(&dir);
        let first = Node::open(&dir, &db, None).unwrap();
        assert!(first.created);
        let tenant = first.keys.tenant().to_owned();
        drop(first);
        let again = Node::open(&dir, &db, None).unwrap();
        assert!(!again.created);
        assert_eq!(again.keys.tenant(), tenant);
        drop(again);

        let log = tmp.path().join("access.db.kept");
        std::fs::rename(db.access_log_path(), &log).unwrap();
        let err = Node::open(&dir, &db, None).unwrap_err();
        assert!(
            matches!(err, NodeError::AccessLog(m) if m.contains("restore it from backup")),
            "{err}"
        );
        assert!(
            !db.access_log_path().exists(),
            "refusing created no empty log"
        );
        std::fs::rename(&log, db.access_log_path()).unwrap();

        std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
        let before = std::fs::read(db.node_path()).unwrap();
        let err = Node::open(&dir, &db, None).unwrap_err();
        assert!(
            matches!(&err, NodeError::KeyFile { source, .. } if source.to_string().contains("restore the key file")),
            "{err}"
        );
        assert!(!dir.join(KEY_FILE).exists(), "no new key file was made");
        assert_eq!(std::fs::read(db.node_path()).unwrap(), before);
    }

    #[test]
    fn a_key_file_that_does_not_open_creates_no_database() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        create_dir_private(&dir).unwrap();
        let right = Passphrase::new("correct horse battery staple".into()).unwrap();
        let wrong = Passphrase::new("incorrect horse battery staple".into()).unwrap();
        RootKey::create_file(&dir.join(KEY_FILE), Some(&right)).unwrap();
        let db = Embedded::new(&dir);
        let err = Node::open(&dir, &db, Some(&wrong)).unwrap_err();
        assert!(matches!(err, NodeError::KeyFile { .. }), "{err}");
        assert!(!db.node_path().exists() && !db.access_log_path().exists());
        Node::open(&dir, &db, Some(&right)).unwrap();
        assert!(db.node_path().exists() && db.access_log_path().exists());
    }
}
