//! A read cache in front of a store, for what every request reads and almost nothing writes: policies,
//! resources, CAs, principals and bearer tokens.
//!
//! Staleness is bounded. A write through this cache clears it at once. A write anywhere else (another replica,
//! the CLI on the same data directory) bumps the store's change epoch in its own transaction; the cache reads
//! the epoch at most once per `staleness` and clears itself when it moved, so such a change (a revoked token,
//! a removed binding) takes effect here within `staleness`.
//!
//! When the store is unreachable, calls through the cache fail at once with `Unavailable` for a short while
//! after a failure (a circuit breaker), so a request pays at most one connection timeout, not one per read.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::*;

/// How long after an `Unavailable` answer calls fail at once instead of trying the store again.
const BREAK_MS: i64 = 1000;

/// Entries per map at most; a full map is emptied rather than grown (names can come from callers).
const MAX_ENTRIES: usize = 10_000;

struct Map<K, V>(Mutex<HashMap<K, V>>);

impl<K: Eq + Hash, V: Clone> Map<K, V> {
    fn new() -> Self {
        Map(Mutex::new(HashMap::new()))
    }
    fn get(&self, k: &K) -> Option<V> {
        self.0.lock().ok()?.get(k).cloned()
    }
    fn put(&self, k: K, v: V) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= MAX_ENTRIES {
                m.clear();
            }
            m.insert(k, v);
        }
    }
    fn clear(&self) {
        if let Ok(mut m) = self.0.lock() {
            m.clear();
        }
    }
}

pub struct CachedStore {
    inner: Arc<dyn Store>,
    staleness: Duration,
    started: Instant,
    /// When the epoch was last read, in milliseconds since `started`.
    checked_ms: AtomicI64,
    checking: AtomicBool,
    epoch: AtomicI64,
    /// Until when (ms since `started`) calls fail at once: the store just answered `Unavailable`.
    down_until_ms: AtomicI64,
    /// Bumped by every clear: a read that began before a clear does not put its (possibly old) answer back.
    generation: AtomicU64,
    policies: Map<String, Option<PolicyRecord>>,
    resources: Map<(String, String), Option<ResourceRecord>>,
    cas: Map<String, Option<CaRecord>>,
    principals: Map<String, Option<PrincipalRecord>>,
    bearers: Map<Vec<u8>, BearerRecord>,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn Store>, staleness: Duration) -> CachedStore {
        CachedStore {
            inner,
            staleness,
            started: Instant::now(),
            checked_ms: AtomicI64::new(i64::MIN),
            checking: AtomicBool::new(false),
            epoch: AtomicI64::new(i64::MIN),
            down_until_ms: AtomicI64::new(i64::MIN),
            generation: AtomicU64::new(0),
            policies: Map::new(),
            resources: Map::new(),
            cas: Map::new(),
            principals: Map::new(),
            bearers: Map::new(),
        }
    }

    fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.policies.clear();
        self.resources.clear();
        self.cas.clear();
        self.principals.clear();
        self.bearers.clear();
    }

    fn now_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Fails at once while the breaker is open.
    fn up(&self) -> Result<()> {
        if self.now_ms() < self.down_until_ms.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "the database did not answer moments ago; try again shortly".into(),
            ));
        }
        Ok(())
    }

    /// Opens the breaker when the store answered `Unavailable`.
    fn note<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(StoreError::Unavailable(_)) = &result {
            self.down_until_ms
                .store(self.now_ms().saturating_add(BREAK_MS), Ordering::Release);
        }
        result
    }

    /// Reads the change epoch if it was last read more than `staleness` ago, and clears the cache if it moved.
    /// One caller reads it; the others go on with the cache meanwhile.
    async fn refresh(&self) -> Result<()> {
        self.up()?;
        let due = self
            .checked_ms
            .load(Ordering::Acquire)
            .saturating_add(i64::try_from(self.staleness.as_millis()).unwrap_or(i64::MAX))
            <= self.now_ms();
        if !due
            || self
                .checking
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Ok(());
        }
        let result = match self.note(self.inner.change_epoch().await) {
            Ok(epoch) => {
                if self.epoch.swap(epoch, Ordering::AcqRel) != epoch {
                    self.clear();
                }
                self.checked_ms.store(self.now_ms(), Ordering::Release);
                Ok(())
            }
            // Unknown state: trust nothing cached.
            Err(e) => {
                self.clear();
                Err(e)
            }
        };
        self.checking.store(false, Ordering::Release);
        result
    }

    /// A cached answer, or the store's (remembered unless a clear happened meanwhile).
    async fn cached<K, V, F>(&self, map: &Map<K, V>, key: K, load: F) -> Result<V>
    where
        K: Eq + Hash,
        V: Clone,
        F: Future<Output = Result<V>>,
    {
        self.refresh().await?;
        if let Some(v) = map.get(&key) {
            return Ok(v);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let v = self.note(load.await)?;
        if self.generation.load(Ordering::SeqCst) == generation {
            map.put(key, v.clone());
        }
        Ok(v)
    }

    /// Runs a write and clears the cache after it, whatever its result (a failed write may still have
    /// committed before the connection broke).
    async fn changing<T>(&self, write: impl Future<Output = Result<T>>) -> Result<T> {
        self.up()?;
        let result = self.note(write.await);
        self.clear();
        result
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn create_resource(
        &self,
        resource: &ResourceRecord,
        ca: Option<&CaRecord>,
        operation: Option<&OperationRecord>,
        audit: Option<&AuditEvent>,
    ) -> Result<()> {
        self.changing(self.inner.create_resource(resource, ca, operation, audit))
            .await
    }

    async fn get_resource(&self, kind: &str, name: &str) -> Result<Option<ResourceRecord>> {
        let key = (kind.to_string(), name.to_string());
        self.cached(&self.resources, key, self.inner.get_resource(kind, name))
            .await
    }

    async fn list_resources(
        &self,
        kind: &str,
        parent: &str,
        after_name: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ResourceRecord>> {
        self.inner
            .list_resources(kind, parent, after_name, limit)
            .await
    }

    async fn list_all_resources(
        &self,
        kind: &str,
        after_name: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ResourceRecord>> {
        self.inner.list_all_resources(kind, after_name, limit).await
    }

    async fn update_resource(
        &self,
        resource: &ResourceRecord,
        audit: Option<&AuditEvent>,
    ) -> Result<()> {
        self.changing(self.inner.update_resource(resource, audit))
            .await
    }

    async fn delete_resource(
        &self,
        kind: &str,
        name: &str,
        operation: Option<&OperationRecord>,
        audit: Option<&AuditEvent>,
    ) -> Result<()> {
        self.changing(self.inner.delete_resource(kind, name, operation, audit))
            .await
    }

    async fn get_ca(&self, owner: &str) -> Result<Option<CaRecord>> {
        self.cached(&self.cas, owner.to_string(), self.inner.get_ca(owner))
            .await
    }

    async fn put_ca(&self, ca: &CaRecord) -> Result<()> {
        self.changing(self.inner.put_ca(ca)).await
    }

    async fn get_operation(&self, name: &str) -> Result<Option<OperationRecord>> {
        self.inner.get_operation(name).await
    }

    async fn list_operations(
        &self,
        parent: &str,
        after_name: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OperationRecord>> {
        self.inner.list_operations(parent, after_name, limit).await
    }

    async fn delete_operation(&self, name: &str) -> Result<bool> {
        self.inner.delete_operation(name).await
    }

    async fn get_idempotent(
        &self,
        scope: &str,
        request_id: &str,
    ) -> Result<Option<IdempotencyRecord>> {
        self.inner.get_idempotent(scope, request_id).await
    }

    async fn write_batch(&self, items: &[WriteItem]) -> Result<Vec<IssuanceOutcome>> {
        // Issuances, tokens and audit events: nothing the cache holds.
        self.up()?;
        self.note(self.inner.write_batch(items).await)
    }

    async fn list_issuances(&self, owner: &str) -> Result<Vec<IssuanceRecord>> {
        self.inner.list_issuances(owner).await
    }

    async fn get_issuance(&self, serial_hex: &str) -> Result<Option<IssuanceStatus>> {
        self.inner.get_issuance(serial_hex).await
    }

    async fn revoke_issuances(
        &self,
        target: &RevocationTarget,
        now_unix: i64,
        audit: Option<&AuditEvent>,
    ) -> Result<Vec<String>> {
        self.inner.revoke_issuances(target, now_unix, audit).await
    }

    async fn purge_idempotency(&self, before_unix: i64, limit: u32) -> Result<u64> {
        self.inner.purge_idempotency(before_unix, limit).await
    }

    async fn purge_expired_issuances(&self, expired_before_unix: i64, limit: u32) -> Result<u64> {
        self.inner
            .purge_expired_issuances(expired_before_unix, limit)
            .await
    }

    async fn next_counter(&self, name: &str) -> Result<i64> {
        self.inner.next_counter(name).await
    }

    async fn change_epoch(&self) -> Result<i64> {
        self.inner.change_epoch().await
    }

    async fn put_principal(&self, principal: &PrincipalRecord) -> Result<()> {
        self.changing(self.inner.put_principal(principal)).await
    }

    async fn get_principal(&self, id: &str) -> Result<Option<PrincipalRecord>> {
        self.cached(
            &self.principals,
            id.to_string(),
            self.inner.get_principal(id),
        )
        .await
    }

    async fn put_bearer_token(
        &self,
        token_sha256: &[u8],
        principal_id: &str,
        created_unix: i64,
        expires_unix: Option<i64>,
    ) -> Result<()> {
        self.changing(self.inner.put_bearer_token(
            token_sha256,
            principal_id,
            created_unix,
            expires_unix,
        ))
        .await
    }

    async fn create_user(
        &self,
        principal: &PrincipalRecord,
        token_sha256: &[u8],
        expires_unix: Option<i64>,
    ) -> Result<bool> {
        self.changing(
            self.inner
                .create_user(principal, token_sha256, expires_unix),
        )
        .await
    }

    async fn bearer(&self, token_sha256: &[u8]) -> Result<Option<BearerRecord>> {
        self.refresh().await?;
        if let Some(b) = self.bearers.get(&token_sha256.to_vec()) {
            return Ok(Some(b));
        }
        // Only tokens that exist are remembered: unknown ones come from guessing callers, who are throttled
        // before they get here.
        let generation = self.generation.load(Ordering::SeqCst);
        let found = self.note(self.inner.bearer(token_sha256).await)?;
        if let Some(b) = &found
            && self.generation.load(Ordering::SeqCst) == generation
        {
            self.bearers.put(token_sha256.to_vec(), b.clone());
        }
        Ok(found)
    }

    async fn revoke_bearer_tokens(
        &self,
        principal_id: &str,
        audit: Option<&AuditEvent>,
    ) -> Result<u64> {
        self.changing(self.inner.revoke_bearer_tokens(principal_id, audit))
            .await
    }

    async fn get_policy(&self, resource: &str) -> Result<Option<PolicyRecord>> {
        self.cached(
            &self.policies,
            resource.to_string(),
            self.inner.get_policy(resource),
        )
        .await
    }

    async fn list_policies(&self) -> Result<Vec<PolicyRecord>> {
        self.inner.list_policies().await
    }

    async fn set_policy(
        &self,
        policy: &PolicyRecord,
        expected_etag: Option<&[u8]>,
        audit: Option<&AuditEvent>,
    ) -> Result<()> {
        self.changing(self.inner.set_policy(policy, expected_etag, audit))
            .await
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<StoredAuditEvent>> {
        self.inner.list_audit(filter).await
    }

    async fn audit_head(&self) -> Result<Option<(i64, Vec<u8>)>> {
        self.inner.audit_head().await
    }

    async fn append_checkpoint(&self, checkpoint: &AuditCheckpoint) -> Result<i64> {
        self.inner.append_checkpoint(checkpoint).await
    }

    async fn checkpoints(&self) -> Result<Vec<AuditCheckpoint>> {
        self.inner.checkpoints().await
    }

    async fn audit_keys(&self) -> Result<Vec<AuditKeyRecord>> {
        self.inner.audit_keys().await
    }

    async fn put_audit_key(&self, key: &AuditKeyRecord) -> Result<AuditKeyRecord> {
        self.inner.put_audit_key(key).await
    }

    async fn sealed_keys(&self) -> Result<Vec<SealedKey>> {
        self.inner.sealed_keys().await
    }

    async fn replace_sealed_keys(
        &self,
        keys: &[SealedKey],
        audit: Option<&AuditEvent>,
    ) -> Result<()> {
        self.changing(self.inner.replace_sealed_keys(keys, audit))
            .await
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        self.inner.signing_keys().await
    }

    async fn put_signing_key(&self, key: &SigningKeyRecord) -> Result<()> {
        self.changing(self.inner.put_signing_key(key)).await
    }

    async fn first_signing_key(&self, key: &SigningKeyRecord) -> Result<SigningKeyRecord> {
        self.changing(self.inner.first_signing_key(key)).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}
