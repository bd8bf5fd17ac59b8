//! The HTTP API: one file per dialect (`tigase`), key checks (`auth`), the error mapping
//! (`error`) and the listener (`server`).

pub mod auth;
pub mod error;
pub mod listener;
pub mod log;
pub mod server;
pub mod tigase;

pub use server::{router, AppState};
