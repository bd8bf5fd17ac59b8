//! The held statuses: [`StatusTable`], the one shared handle over them (sources per resource,
//! effective presence, commit ordering through the store, the expiry heap and task, the change
//! lanes of the delivery backend).
//!
//! What a status is lives in the model (`model/`); this module holds them. It sits above the
//! store (it is the only writer to its statuses) and below the read model, the link and the
//! dialects.

mod table;

pub use table::{
    Applied, Change, Changes, Edit, Held, ObserverFn, ResourceStatus, Roster, SourceStatus,
    StatusTable,
};
