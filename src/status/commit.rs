//! Edits of the held statuses and their commit through the store.
//!
//! The table is the only writer to the durable [`Store`], and it holds only what the store has
//! committed: a change is numbered and queued to the store under one lock (so the store commits
//! changes in the order of their numbers), and applied to the map by the store's acknowledgement
//! once its commit succeeded — also when the request that made it has gone away meanwhile. A
//! change whose commit failed leaves no trace: not in the map, not on the wire, not in the
//! metrics. `set`/`clear` return once the change is committed and applied.

use std::sync::atomic::Ordering;

use jid::{BareJid, FullJid, ResourcePart};
use tokio::sync::oneshot;

use super::held::SourceStatus;
use super::StatusTable;
use crate::base::clock::now_ms;
use crate::model::{Source, Status};
#[cfg(doc)]
use crate::store::Store;
use crate::store::{StoreError, StoredSource, Write};

/// A change of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Hold `status` for `source` (replacing its previous one), until `expires_at` if given (ms
    /// since the Unix epoch).
    Set {
        /// Who sets it.
        source: Source,
        /// The status.
        status: Status,
        /// When it ends by itself.
        expires_at: Option<u64>,
    },
    /// Remove `source`'s status.
    Clear(Source),
    /// Remove every source's status.
    ClearAll,
    /// Remove `source`'s status if it still expires at this moment (the expiry task's edit).
    Expire(Source, u64),
}

/// What an edit left of its resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The resource's sequence number after the edit (the edit's own if it changed the
    /// effective status).
    pub seq: u64,
    /// The effective status after the edit; `None` when no source is left.
    pub effective: Option<SourceStatus>,
    /// Whether the edit changed what contacts see (else nothing is sent for it).
    pub changed: bool,
}
impl StatusTable {
    /// Make `edits` durable (all in one store transaction) and apply them, in order; returns
    /// once they are committed and applied, what each left. On an error nothing changed.
    pub async fn write_many(
        &self,
        edits: Vec<(BareJid, ResourcePart, Edit)>,
    ) -> Result<Vec<Applied>, StoreError> {
        let now = now_ms();
        let (tx, rx) = oneshot::channel();
        {
            let _order = self.inner.order.lock().unwrap_or_else(|e| e.into_inner());
            let first = self
                .inner
                .seq
                .fetch_add(edits.len() as u64, Ordering::Relaxed)
                + 1;
            let table = self.clone();
            let apply = move |edits: Vec<(BareJid, ResourcePart, Edit)>| -> Vec<Applied> {
                edits
                    .into_iter()
                    .enumerate()
                    .map(|(i, (u, r, e))| table.apply(&u, &r, e, first + i as u64, now))
                    .collect()
            };
            match &self.inner.store {
                None => {
                    let _ = tx.send(Ok(apply(edits)));
                }
                Some(store) => {
                    let writes = edits
                        .iter()
                        .enumerate()
                        .map(|(i, (u, r, e))| durable(u.with_resource(r), e, now, first + i as u64))
                        .collect();
                    store.write_then(
                        writes,
                        Box::new(move |result| {
                            let _ = tx.send(result.map(|()| apply(edits)));
                        }),
                    );
                }
            }
        }
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// [`write_many`](Self::write_many) of one edit.
    pub async fn write(
        &self,
        user: &BareJid,
        resource: &ResourcePart,
        edit: Edit,
    ) -> Result<Applied, StoreError> {
        let mut applied = self
            .write_many(vec![(user.clone(), resource.clone(), edit)])
            .await?;
        Ok(applied.pop().expect("one edit, one result"))
    }

    /// Hold `status` for `user/resource` as source `default` (the Tigase dialect), replacing its
    /// previous one; returns once durable and applied, with the resource's sequence number.
    pub async fn set(
        &self,
        user: &BareJid,
        resource: &ResourcePart,
        status: Status,
    ) -> Result<u64, StoreError> {
        let edit = Edit::Set {
            source: Source::DEFAULT,
            status,
            expires_at: None,
        };
        Ok(self.write(user, resource, edit).await?.seq)
    }

    /// Clear source `default` of `user/resource`; when no source is left, the resource stays (also
    /// in the store) as a tombstone until its `unavailable` is delivered.
    pub async fn clear(&self, user: &BareJid, resource: &ResourcePart) -> Result<u64, StoreError> {
        Ok(self
            .write(user, resource, Edit::Clear(Source::DEFAULT))
            .await?
            .seq)
    }
}

/// The durable form of an edit of `jid` made at `now`, numbered `seq`.
fn durable(jid: FullJid, edit: &Edit, now: u64, seq: u64) -> Write {
    match edit {
        Edit::Set {
            source,
            status,
            expires_at,
        } => Write::Set(
            jid,
            *source,
            StoredSource {
                status: status.clone(),
                updated_at: now,
                expires_at: *expires_at,
            },
        ),
        Edit::Clear(source) => Write::Clear(jid, *source, seq),
        Edit::ClearAll => Write::ClearAll(jid, seq),
        Edit::Expire(source, at) => Write::Expire(jid, *source, *at, seq),
    }
}
