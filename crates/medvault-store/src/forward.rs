//! The one list of [`StoreRead`](crate::StoreRead)'s methods that backends forward to their
//! query functions, and the one way a backend's store hands its writes to the shared writer.

/// Implements [`StoreRead`](crate::StoreRead) for `$ty` by calling the backend's query function of
/// the same name in module `$sql` on a connection lent by `$ty`'s own `with_conn` method
/// (`fn with_conn<T>(&self, f: impl FnOnce(&mut C) -> Result<T, StoreError>) -> Result<T, _>`,
/// or `&C`). Every backend's store and its transaction view use it, so the trait's reads are
/// listed once.
#[macro_export]
macro_rules! forward_reads {
    ($ty:ty, $($sql:ident)::+) => {
        impl $crate::LogRead for $ty {
            fn meta(&self, key: &str) -> Result<Option<String>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::meta(c, key))
            }
            fn ledger_size(&self) -> Result<u64, $crate::StoreError> {
                self.with_conn($($sql)::+::ledger_size)
            }
            fn ledger_nodes(
                &self,
                level: u8,
                start: u64,
                count: u64,
            ) -> Result<Vec<$crate::__private::Hash>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::ledger_nodes(c, level, start, count))
            }
            fn ledger_nodes_at(&self, keys: &[(u8, u64)]) -> Result<Vec<Option<$crate::__private::Hash>>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::ledger_nodes_at(c, keys))
            }
            fn ledger_entries(
                &self,
                start: u64,
                count: u64,
            ) -> Result<Vec<(u64, Vec<u8>)>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::ledger_entries(c, start, count))
            }
            fn audit_details(
                &self,
                start: u64,
                count: u64,
            ) -> Result<Vec<(u64, $crate::AuditDetail)>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::audit_details(c, start, count))
            }
            fn access_leaves(
                &self,
                tag: &$crate::__private::BlindValue,
                range: (u64, u64),
                count: u64,
            ) -> Result<Vec<u64>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::access_leaves(c, tag, range, count))
            }
            fn access_tags(
                &self,
                start: u64,
                count: u64,
            ) -> Result<Vec<(u64, $crate::__private::BlindValue)>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::access_tags(c, start, count))
            }
            fn access_tags_astray(&self, size: u64) -> Result<(u64, Option<String>), $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::access_tags_astray(c, size))
            }
            fn checkpoint(&self, size: Option<u64>) -> Result<Option<(u64, String)>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::checkpoint(c, size))
            }
            fn witnessed(&self, origin: &str) -> Result<Option<(u64, $crate::__private::Hash)>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::witnessed(c, origin))
            }
        }
        impl $crate::KeyRead for $ty {
            fn keks(&self) -> Result<Vec<(u32, $crate::__private::WrappedKey)>, $crate::StoreError> {
                self.with_conn($($sql)::+::keks)
            }
            fn data_key(&self, name: &$crate::__private::KeyName) -> Result<Option<$crate::DataKeyRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::data_key(c, name))
            }
        }
        impl $crate::RecordRead for $ty {
            fn current(
                &self,
                rt: &$crate::__private::ResourceType,
                id: &$crate::__private::ResourceId,
            ) -> Result<Option<$crate::CurrentMeta>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::current(c, rt, id))
            }
            fn version(
                &self,
                rt: &$crate::__private::ResourceType,
                id: &$crate::__private::ResourceId,
                v: Option<u64>,
            ) -> Result<Option<$crate::StoredVersion>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::version(c, rt, id, v))
            }
            fn history(
                &self,
                rt: &$crate::__private::ResourceType,
                id: Option<&$crate::__private::ResourceId>,
                offset: u64,
                limit: u64,
            ) -> Result<$crate::SearchPage, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::history(c, rt, id, offset, limit))
            }
            fn search(&self, q: &$crate::IndexQuery) -> Result<$crate::SearchPage, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::search(c, q))
            }
            fn scan(
                &self,
                q: &$crate::IndexQuery,
                before: Option<u64>,
                limit: u64,
            ) -> Result<$crate::Scan, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::scan(c, q, before, limit))
            }
            fn current_after(
                &self,
                rt: &medvault_core::ResourceType,
                after: Option<&str>,
                since: Option<i64>,
                limit: u64,
            ) -> Result<Vec<$crate::StoredVersion>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::current_after(c, rt, after, since, limit))
            }
            fn versions_after(
                &self,
                after: Option<(&str, &str, u64)>,
                limit: u64,
            ) -> Result<Vec<$crate::StoredVersion>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::versions_after(c, after, limit))
            }
            fn amendments_after(
                &self,
                after: Option<(&str, &str, u64, u32)>,
                limit: u64,
            ) -> Result<Vec<$crate::Amendment>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::amendments_after(c, after, limit))
            }
        }
        impl $crate::IdentityRead for $ty {
            fn token(&self, hash: &$crate::TokenHash) -> Result<Option<$crate::TokenRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::token(c, hash))
            }
            fn tokens(&self) -> Result<Vec<$crate::TokenRow>, $crate::StoreError> {
                self.with_conn($($sql)::+::tokens)
            }
            fn user(&self, id: &str) -> Result<Option<$crate::UserRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::user(c, id))
            }
            fn user_by_name(&self, index: &$crate::__private::BlindValue) -> Result<Option<$crate::UserRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::user_by_name(c, index))
            }
            fn users(&self) -> Result<Vec<$crate::UserRow>, $crate::StoreError> {
                self.with_conn($($sql)::+::users)
            }
            fn session(&self, hash: &$crate::TokenHash) -> Result<Option<$crate::SessionRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::session(c, hash))
            }
            fn client(&self, client_id: &str) -> Result<Option<$crate::ClientRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::client(c, client_id))
            }
            fn clients(&self) -> Result<Vec<$crate::ClientRow>, $crate::StoreError> {
                self.with_conn($($sql)::+::clients)
            }
            fn access_token(&self, hash: &$crate::TokenHash) -> Result<Option<$crate::AccessTokenRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::access_token(c, hash))
            }
            fn grant(&self, hash: &$crate::TokenHash) -> Result<Option<$crate::GrantRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::grant(c, hash))
            }
            fn passkeys(&self, user_id: &str) -> Result<Vec<(Vec<u8>, $crate::__private::Sealed)>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::passkeys(c, user_id))
            }
            fn recovery_codes_left(&self, user_id: &str) -> Result<u64, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::recovery_codes_left(c, user_id))
            }
            fn break_glass(
                &self,
                user_id: &str,
                patient: &str,
                now_micros: i64,
            ) -> Result<Option<$crate::BreakGlassRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::break_glass(c, user_id, patient, now_micros))
            }
            fn alerts(&self, open_only: bool) -> Result<Vec<$crate::AlertRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::alerts(c, open_only))
            }
            fn alert(&self, id: &str) -> Result<Option<$crate::AlertRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::alert(c, id))
            }
            fn alerts_page(
                &self,
                q: &$crate::AlertQuery<'_>,
            ) -> Result<Vec<$crate::AlertRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::alerts_page(c, q))
            }
            fn verdicts(
                &self,
                since_micros: i64,
            ) -> Result<Vec<(String, String, String)>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::verdicts(c, since_micros))
            }
            fn response(&self, id: &str) -> Result<Option<$crate::ResponseRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::response(c, id))
            }
            fn responses(
                &self,
                alert: Option<&str>,
                before: Option<(i64, &str)>,
                limit: u32,
            ) -> Result<Vec<$crate::ResponseRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::responses(c, alert, before, limit))
            }
            fn active_responses(
                &self,
                now_micros: i64,
            ) -> Result<Vec<$crate::ResponseRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::active_responses(c, now_micros))
            }
            fn register_entry(
                &self,
                id: &str,
            ) -> Result<Option<$crate::RegisterRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::register_entry(c, id))
            }
            fn register(
                &self,
                kind: Option<&str>,
            ) -> Result<Vec<$crate::RegisterRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::register(c, kind))
            }
            fn register_in_force(
                &self,
                kind: &str,
                subject: &str,
            ) -> Result<bool, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::register_in_force(c, kind, subject))
            }
        }
        impl $crate::PeerRead for $ty {
            fn peer(&self, node: &str) -> Result<Option<$crate::PeerRow>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::peer(c, node))
            }
            fn peers(&self) -> Result<Vec<$crate::PeerRow>, $crate::StoreError> {
                self.with_conn($($sql)::+::peers)
            }
            fn share_receipt(
                &self,
                sender: &str,
                bundle_id: &str,
            ) -> Result<Option<String>, $crate::StoreError> {
                self.with_conn(|c| $($sql)::+::share_receipt(c, sender, bundle_id))
            }
        }
    };
}

/// Implements [`LogStore`](crate::LogStore) and [`Store`](crate::Store) for `$ty`, a backend's
/// store: writes go to its [`GroupWriter`](crate::group::GroupWriter) field `writer`, dumps to
/// its own `dump_tables` method (same signature as [`LogStore::dump`](crate::LogStore::dump)),
/// and the data key names are read by the query function `data_key_names` in module `$sql` on a
/// connection lent by `with_conn`, as for [`forward_reads`].
#[macro_export]
macro_rules! forward_writes {
    ($ty:ty, $($sql:ident)::+) => {
        impl $crate::LogStore for $ty {
            fn submit_log(&self, op: $crate::LogOp, done: $crate::WriteDone) {
                self.writer.submit(Box::new(move |tx| op(tx)), done);
            }
            fn dump(
                &self,
                tables: &'static [$crate::dump::Table],
                sink: &mut $crate::dump::Sink<'_>,
            ) -> Result<(), $crate::StoreError> {
                self.dump_tables(tables, sink)
            }
        }
        impl $crate::Store for $ty {
            fn write(&self, op: $crate::WriteOp) -> Result<(), $crate::StoreError> {
                self.writer.write(op)
            }
            fn submit(&self, op: $crate::WriteOp, done: $crate::WriteDone) {
                self.writer.submit(op, done);
            }
            fn data_key_names(&self) -> Result<Vec<$crate::__private::KeyName>, $crate::StoreError> {
                self.with_conn($($sql)::+::data_key_names)
            }
        }
    };
}
