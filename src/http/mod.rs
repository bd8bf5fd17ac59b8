//! The HTTP API. What every request goes through is in one place (`pipeline`: the dialect, the
//! request span, the series every dialect records, the refusal log, and the shared steps);
//! around it: key checks (`auth`), validation at the boundary (`input`), the error mapping
//! (`error`), the router and `AppState` (`server`), the operations endpoints (`ops`), the event
//! stream over HTTP (`sse`), the accept loop with its limits (`listener`) and what reaches the
//! log (`log`). Then one file or folder per dialect, which only translates (`tigase/`: its order
//! of steps in `mod.rs`, its wire format in `command.rs`; `v1/`: status, read side, tokens, the
//! OpenAPI document; `matrix`; `waher/`, the Agent API calls) and the status page (`ui/`). A
//! dialect imports the shared parts, never another dialect.

pub mod auth;
pub mod error;
pub mod input;
pub mod listener;
pub mod log;
pub mod matrix;
pub mod ops;
pub mod pipeline;
pub mod server;
pub mod sse;
pub mod tigase;
pub mod ui;
pub mod v1;
pub mod waher;

pub use server::{router, AppState};
