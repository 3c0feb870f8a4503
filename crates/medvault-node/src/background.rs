//! The node's background jobs while it serves: signing checkpoints of both logs where they grew,
//! and asking witnesses to cosign them (on their own schedule, so a slow witness never delays a
//! checkpoint). Above both [`crate::ledger`] and [`crate::witness`], which do not know of it.

use std::sync::Arc;
use std::time::Duration;

use crate::Node;
use crate::error::Error;
use crate::ledger::LogId;

/// Signs checkpoints every `every` while the node serves (only where a log grew). Starts the
/// witness-cosigning task beside it when `witnesses` are configured.
pub async fn checkpoint_task(
    node: Arc<Node>,
    witnesses: Arc<[crate::witness::RemoteWitness]>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for log in LogId::BOTH {
        let (store, ledger) = (node.log_store(log), Arc::clone(&node.ledger));
        let warmed =
            tokio::task::spawn_blocking(move || ledger.log(log).node_cache().warm(store.as_ref()))
                .await;
        match warmed {
            Ok(Ok(n)) => tracing::debug!(%log, nodes = n, "ledger node cache warmed"),
            Ok(Err(e)) => tracing::warn!(%log, error = %e, "ledger node cache not warmed"),
            Err(e) => tracing::warn!(%log, error = %e, "ledger node cache not warmed"),
        }
    }
    // Witnesses are asked on their own schedule, so a slow or unreachable witness never delays
    // the node's own checkpoints.
    let cosigning = (!witnesses.is_empty()).then(|| {
        tokio::spawn(crate::witness::cosign_task(
            Arc::clone(&node),
            witnesses,
            every,
        ))
    });
    let _stop_with_us = AbortOnDrop(cosigning);
    loop {
        tick.tick().await;
        match checkpoint_both(&node).await {
            Ok((records, access)) if records.is_some() || access.is_some() => {
                tracing::debug!(?records, ?access, "checkpoints signed");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.message, "checkpoint failed"),
        }
    }
}

/// Indexes the access log by patient while the node serves, every `every`: each run of
/// leaves as soon as the log holds it whole ([`crate::access_index::catch_up`]).
pub async fn access_index_task(node: Arc<Node>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = Arc::clone(&node);
        let done = tokio::task::spawn_blocking(move || {
            crate::access_index::catch_up(n.access.as_ref(), &n.ledger)
        })
        .await;
        match done {
            Ok(Ok(r)) if r.leaves > 0 => {
                tracing::debug!(
                    leaves = r.leaves,
                    rows = r.rows,
                    to = r.to,
                    "access log indexed"
                );
            }
            Ok(Ok(_)) => {}
            // Another process serving the same database indexed the run first.
            Ok(Err(crate::access_index::ReindexError::Moved)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "indexing the access log failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "indexing the access log failed; will retry"),
        }
    }
}

/// Signs new checkpoints of both logs (see [`Ledger::checkpoint_now`]) on a blocking thread.
///
/// # Errors
/// Store failures.
pub async fn checkpoint_both(node: &Arc<Node>) -> Result<(Option<u64>, Option<u64>), Error> {
    let node = Arc::clone(node);
    tokio::task::spawn_blocking(move || {
        node.ledger
            .checkpoint_now(node.store.as_ref(), node.access.as_ref())
    })
    .await
    .map_err(|e| Error::internal(&e))?
}

/// Aborts a spawned task when dropped (when the checkpoint task is aborted at shutdown).
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}
