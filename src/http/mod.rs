//! The HTTP API. What every request goes through is in one place (`pipeline`: the dialect, the
//! request span, the series every dialect records, the refusal log, and the shared steps);
//! around it: key checks (`auth`), validation at the boundary (`input`), the error mapping
//! (`error`), `AppState` (`state`), the OpenAPI document of `/v1` and the Tigase dialect (`openapi`), the operations endpoints (`ops`), the event
//! stream over HTTP (`sse`), the accept loop with its limits (`listener`) and what reaches the
//! log (`log`). Then one file or folder per dialect, which only translates (`tigase/`: its order
//! of steps in `mod.rs`, its wire format in `command.rs`; `v1/`: status, read side, tokens, the
//! OpenAPI document; `matrix`; `waher/`, the Agent API calls) and the status page (`ui/`). A
//! dialect imports the shared parts, never another dialect; the router (`router`) imports them
//! all and is imported by none (tests/layers.rs checks both).

pub mod auth;
pub mod error;
pub mod input;
pub mod listener;
pub mod log;
pub mod matrix;
pub mod openapi;
pub mod ops;
pub mod pipeline;
pub mod readiness;
pub mod router;
pub mod sse;
pub mod state;
pub mod tigase;
pub mod ui;
pub mod v1;
pub mod waher;

pub use router::router;
pub use state::AppState;
