//! The HTTP API: one file per dialect (`tigase`; `v1`, with its read side in `read` and its
//! tokens in `tokens`; `matrix`; `waher`, the Agent API calls), the status page (`ui`), key checks (`auth`), the error mapping (`error`), validation
//! shared by the dialects (`input`), the request pipeline and operations endpoints (`server`),
//! the accept loop with its limits (`listener`) and what reaches the log (`log`).

pub mod auth;
pub mod error;
pub mod input;
pub mod listener;
pub mod log;
pub mod matrix;
pub mod read;
pub mod server;
pub mod tigase;
pub mod tokens;
pub mod ui;
pub mod v1;
pub mod waher;

pub use server::{router, AppState};
