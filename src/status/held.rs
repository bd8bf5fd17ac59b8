//! What the table holds for each user, resource and source, and which source wins.
//!
//! One slot per user (`UserEntry`, a dashmap value) holds that user's synthetic resources, and
//! per resource (`Slot`) the status of each source that speaks for it (`Entry`, packed: a million
//! are held at once). What the delivery backend sees of a resource ([`Held`]) is its effective
//! status (see the `model` module doc): the most restrictive source, then the most recent. Each
//! resource carries a sequence number, bumped when its effective status changes or its winning
//! source sets it again (a change of a losing source sends nothing), and the sequence number last
//! delivered, so the delivery backend can coalesce bursts and know what still has to go out. A
//! resource whose last source went stays as a tombstone (`status: None`) until its `unavailable`
//! has been delivered.

use jid::ResourcePart;

use super::lanes::Roster;
use crate::model::{restrictiveness, Show, Source, Status};

/// One synthetic resource of a user as the delivery backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The resource (e.g. `tigase-external`).
    pub resource: ResourcePart,
    /// The effective status, or `None` for a resource whose `unavailable` is still to be
    /// delivered.
    pub status: Option<Status>,
    /// Sequence number of the last change of the effective status.
    pub seq: u64,
    /// Sequence number last delivered to contacts (0: never).
    pub delivered: u64,
}

/// One source's status of a resource, as held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStatus {
    /// Who set it.
    pub source: Source,
    /// The status.
    pub status: Status,
    /// When it was set (ms since the Unix epoch).
    pub updated_at: u64,
    /// When it ends by itself (ms since the Unix epoch).
    pub expires_at: Option<u64>,
}

/// Everything held for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceStatus {
    /// The resource.
    pub resource: ResourcePart,
    /// What contacts see; `None` while the resource's `unavailable` is being delivered.
    pub effective: Option<SourceStatus>,
    /// Every source, most recently updated last.
    pub sources: Vec<SourceStatus>,
}

/// One source's status, packed into 32 bytes: a million of them are held at once (BENCHMARKS.md,
/// P4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) text: Option<Box<str>>,
    /// 0: never (ms since the Unix epoch: expiry is kept to the millisecond).
    pub(super) expires_at: u64,
    /// Seconds since the Unix epoch (the store keeps milliseconds; ties between sources set in
    /// the same second go to the later one by their order).
    pub(super) updated_secs: u32,
    pub(super) show: Option<Show>,
    pub(super) priority: i8,
    pub(super) source: Source,
}

impl Entry {
    pub(super) fn new(
        source: Source,
        status: Status,
        updated_at: u64,
        expires_at: Option<u64>,
    ) -> Entry {
        Entry {
            text: status.text.map(String::into_boxed_str),
            updated_secs: u32::try_from(updated_at / 1000).unwrap_or(u32::MAX),
            expires_at: expires_at.unwrap_or(0),
            show: status.show,
            priority: status.priority,
            source,
        }
    }

    pub(super) fn status(&self) -> Status {
        Status {
            show: self.show,
            text: self.text.as_deref().map(str::to_string),
            priority: self.priority,
        }
    }

    pub(super) fn view(&self) -> SourceStatus {
        SourceStatus {
            source: self.source,
            status: self.status(),
            updated_at: u64::from(self.updated_secs) * 1000,
            expires_at: (self.expires_at != 0).then_some(self.expires_at),
        }
    }

    pub(super) fn same_status(&self, other: &Entry) -> bool {
        self.show == other.show && self.priority == other.priority && self.text == other.text
    }
}

/// The sources of a resource: most resources have one, held inline.
#[derive(Debug)]
pub(super) enum Sources {
    One(Entry),
    Many(Box<[Entry]>),
}

impl Sources {
    pub(super) fn as_slice(&self) -> &[Entry] {
        match self {
            Sources::One(e) => std::slice::from_ref(e),
            Sources::Many(v) => v,
        }
    }

    pub(super) fn from_vec(mut v: Vec<Entry>) -> Sources {
        if v.len() == 1 {
            Sources::One(v.pop().expect("one"))
        } else {
            Sources::Many(v.into_boxed_slice())
        }
    }
}

/// One resource of a user.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) resource: ResourcePart,
    pub(super) sources: Sources,
    pub(super) seq: u64,
    pub(super) delivered: u64,
}

impl Slot {
    /// The winning source: the most restrictive, then the most recent (the later in the list).
    pub(super) fn effective(&self) -> Option<&Entry> {
        self.sources
            .as_slice()
            .iter()
            .enumerate()
            .max_by_key(|(i, e)| (restrictiveness(e.show), e.updated_secs, *i))
            .map(|(_, e)| e)
    }

    pub(super) fn held(&self) -> Held {
        Held {
            resource: self.resource.clone(),
            status: self.effective().map(Entry::status),
            seq: self.seq,
            delivered: self.delivered,
        }
    }

    pub(super) fn view(&self) -> ResourceStatus {
        ResourceStatus {
            resource: self.resource.clone(),
            effective: self.effective().map(Entry::view),
            sources: self.sources.as_slice().iter().map(Entry::view).collect(),
        }
    }
}

/// Everything the table keeps for one user (one dashmap slot).
#[derive(Debug, Default)]
pub(super) struct UserEntry {
    /// The user's synthetic resources, sized exactly: most users have one, and a `Vec` would
    /// reserve room for four (measured: 288 of ~650 MB with 1,000,000 users).
    pub(super) held: Box<[Slot]>,
    /// The roster the delivery backend last fetched for this user (the contacts that receive the
    /// user's presence). Cached here rather than in a map of its own so that the user's JID is
    /// stored once, and the cache goes when the user does.
    pub(super) roster: Option<Roster>,
    /// The user is in a lane of `Changes` and not yet taken by the backend.
    pub(super) queued: bool,
}

impl UserEntry {
    pub(super) fn position(&self, resource: &str) -> Option<usize> {
        self.held
            .iter()
            .position(|h| h.resource.as_str() == resource)
    }

    pub(super) fn push(&mut self, slot: Slot) {
        let mut v = std::mem::take(&mut self.held).into_vec();
        v.push(slot);
        self.held = v.into_boxed_slice();
    }

    pub(super) fn remove(&mut self, pos: usize) {
        let mut v = std::mem::take(&mut self.held).into_vec();
        v.remove(pos);
        self.held = v.into_boxed_slice();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_status_sizes() {
        // P4 holds a million of these: keep them as small as the single-status table was.
        assert_eq!(std::mem::size_of::<Entry>(), 32);
        assert!(
            std::mem::size_of::<Slot>() <= 72,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }
}
