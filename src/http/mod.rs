//! The HTTP API: one file or folder per dialect (`tigase/`: its routes and request pipeline in
//! `mod.rs`, its wire format in `command.rs`; `v1`, with its read side in `read` and its tokens
//! in `tokens`; `matrix`; `waher`, the Agent API calls), the status page (`ui`), key checks
//! (`auth`), the error mapping (`error`), validation shared by the dialects (`input`), what every
//! route shares (`server`: `AppState`, the router, the answer to a refusal), the operations
//! endpoints (`ops`), the accept loop with its limits (`listener`) and what reaches the log
//! (`log`).

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
