//! The held statuses: [`StatusTable`], the one shared handle over them.
//!
//! What a status is lives in the model (`model/`); this module holds them. It sits above the
//! store (it is the only writer to its statuses) and below the read model, the link and the
//! dialects. One job per file:
//! - `table.rs`: the handle, its loading from the store, applying a committed edit, reads;
//! - `held.rs`: what is held per user, resource and source, and which source wins (the
//!   effective presence);
//! - `commit.rs`: edits, numbered and committed through the store in order;
//! - `expiry.rs`: the deadline heap and the expiry task;
//! - `lanes.rs`: the change lanes to the delivery backend, delivery bookkeeping, the roster
//!   cache.

mod commit;
mod expiry;
mod held;
mod lanes;
mod table;

pub use commit::{Applied, Edit};
pub use held::{Held, ResourceStatus, SourceStatus};
pub use lanes::{Change, Changes, Roster};
pub use table::{ObserverFn, StatusTable};

#[cfg(test)]
mod tests {
    use super::Edit;
    use crate::model::{Show, Source, Status};

    pub(super) fn st(text: &str) -> Status {
        Status {
            show: Some(Show::Away),
            text: Some(text.into()),
            priority: -1,
        }
    }

    pub(super) fn with(show: Option<Show>, text: &str) -> Status {
        Status {
            show,
            text: Some(text.into()),
            priority: -1,
        }
    }

    pub(super) fn set(source: &str, status: Status, expires_at: Option<u64>) -> Edit {
        Edit::Set {
            source: Source::parse(source).unwrap(),
            status,
            expires_at,
        }
    }
}
