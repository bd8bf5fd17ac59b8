//! Expiry: every source status with an expiry has a deadline in one heap, served by one task
//! ([`StatusTable::run_expiry`]); a due deadline removes the source through the store like a
//! clear (only if it still has that expiry). Deadlines that passed while extpresence was down are
//! applied when the table is loaded ([`StatusTable::new`]), before anything is replayed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jid::{BareJid, ResourcePart};

use super::{Edit, StatusTable};
use crate::base::clock::now_ms;
use crate::model::Source;

/// A source status's expiry, waiting in the heap.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Deadline {
    pub(super) at: u64,
    pub(super) user: BareJid,
    pub(super) resource: ResourcePart,
    pub(super) source: Source,
}
/// Most expiries written in one store transaction.
const EXPIRY_BATCH: usize = 4096;
/// After a failed expiry write, the next try comes this much later.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);
impl StatusTable {
    /// Queue `d` in the heap (and wake the expiry task if it comes first).
    pub(super) fn add_deadline(&self, d: Deadline) {
        let mut heap = self
            .inner
            .deadlines
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if heap.len() > 2 * self.live_deadlines() + 1024 {
            // Mostly stale deadlines: keep only those of statuses still held with that expiry.
            let mut kept = std::mem::take(&mut *heap).into_vec();
            kept.retain(|Reverse(old)| {
                self.expires_at(&old.user, &old.resource, old.source) == Some(old.at)
            });
            *heap = BinaryHeap::from(kept);
        }
        let earliest = heap.peek().is_none_or(|Reverse(first)| d.at < first.at);
        heap.push(Reverse(d));
        drop(heap);
        if earliest {
            self.inner.deadline_added.notify_one();
        }
    }

    /// Number of source statuses with an expiry (the live deadlines).
    fn live_deadlines(&self) -> usize {
        self.inner.expiring.load(Ordering::Relaxed)
    }

    /// Remove source statuses as their deadlines come, until the table is gone: one task for
    /// every deadline. Expiries due together are written in one store transaction.
    pub async fn run_expiry(self) {
        loop {
            let next = self
                .inner
                .deadlines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .peek()
                .map(|Reverse(d)| d.at);
            let notified = self.inner.deadline_added.notified();
            match next {
                None => notified.await,
                Some(at) => {
                    let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                    if !wait.is_zero() {
                        tokio::select! {
                            _ = notified => continue,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
            let due: Vec<Deadline> = {
                let now = now_ms();
                let mut heap = self
                    .inner
                    .deadlines
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let mut due = Vec::new();
                while due.len() < EXPIRY_BATCH && heap.peek().is_some_and(|Reverse(d)| d.at <= now)
                {
                    due.push(heap.pop().expect("peeked").0);
                }
                due
            };
            // Skip deadlines a later set or clear made stale.
            let due: Vec<Deadline> = due
                .into_iter()
                .filter(|d| self.expires_at(&d.user, &d.resource, d.source) == Some(d.at))
                .collect();
            if due.is_empty() {
                continue;
            }
            let edits = due
                .iter()
                .map(|d| {
                    (
                        d.user.clone(),
                        d.resource.clone(),
                        Edit::Expire(d.source, d.at),
                    )
                })
                .collect();
            // Not awaited here: the next batch is queued to the store at once (the writer commits
            // them back to back), so many expiries due together are not delayed by a commit
            // each. A batch whose commit fails comes due again a bit later.
            let table = self.clone();
            tokio::spawn(async move {
                if table.write_many(edits).await.is_err() {
                    tokio::time::sleep(EXPIRY_RETRY).await;
                    for d in due {
                        table.add_deadline(d);
                    }
                }
            });
        }
    }

    /// The expiry of `source`'s status of `user/resource`, if it has one.
    fn expires_at(&self, user: &BareJid, resource: &ResourcePart, source: Source) -> Option<u64> {
        let e = self.inner.map.get(user)?;
        let slot = e.held.iter().find(|s| &s.resource == resource)?;
        let entry = slot
            .sources
            .as_slice()
            .iter()
            .find(|e| e.source == source)?;
        (entry.expires_at != 0).then_some(entry.expires_at)
    }

    /// Deadlines waiting (stale ones included until they come up).
    pub fn deadlines(&self) -> usize {
        self.inner
            .deadlines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Keep the count of live deadlines: an edit took a resource from `before` source statuses
    /// with an expiry to `after`.
    pub(super) fn count_expiring(&self, before: usize, after: usize) {
        if after > before {
            self.inner
                .expiring
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.inner
                .expiring
                .fetch_sub(before - after, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::{set, st};

    #[tokio::test]
    async fn expiry_removes_only_the_status_it_belongs_to() {
        let (t, _rx) = StatusTable::in_memory();
        let alice = BareJid::new("alice@example.com").unwrap();
        let r = ResourcePart::new("phone").unwrap().into_owned();
        let soon = now_ms() + 150;
        t.write(&alice, &r, set("calendar", st("meeting"), Some(soon)))
            .await
            .unwrap();
        t.write(&alice, &r, set("pbx", st("call"), Some(soon)))
            .await
            .unwrap();
        // pbx is set again without expiry: its old deadline is stale.
        t.write(&alice, &r, set("pbx", st("call"), None))
            .await
            .unwrap();
        assert_eq!(t.deadlines(), 2);
        let task = tokio::spawn(t.clone().run_expiry());
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let view = &t.statuses(&alice)[0];
        assert_eq!(view.sources.len(), 1, "{view:?}");
        assert_eq!(view.sources[0].source.as_str(), "pbx");
        assert_eq!(t.deadlines(), 0);
        task.abort();
    }
}
