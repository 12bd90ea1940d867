//! jobhost: a background-job host that runs approved plugin jobs in isolated worker processes.
//!
//! Jobs are *classes* with named *methods*, compiled as shared-library plugins against the
//! stable-ABI SDK `job-sdk`. Only what `allowlist.toml` approves ever runs, and every attempt
//! runs in a fresh worker process that loads the plugin itself, so a crashing, hanging or
//! runaway job ends that process alone. See `docs/architecture.md` for the whole picture.
//!
//! # Dispatching from an application
//!
//! An application queues jobs with [`dispatch`], or a [`Client`] that keeps its connection,
//! and follows them by their [`JobId`]; the dispatcher (`jobhost serve`, started on demand)
//! runs them. Settings come from the environment and `jobhost.toml` ([`Settings::resolve`]),
//! as for the command line.
//!
//! ```no_run
//! use jobhost::{Job, Priority};
//!
//! let id = jobhost::dispatch(
//!     Job::new(r"App\Jobs\SendNotification", "send")
//!         .param("user_id", 789)
//!         .priority(Priority::High),
//! )?;
//! # Ok::<(), jobhost::DispatchError>(())
//! ```
//!
//! # Features
//!
//! - `postgres` (default): the PostgreSQL store, `store = "postgres://..."`. Without it SQLite,
//!   under the state directory, is the only store, and a PostgreSQL URL is refused saying so.
//! - `dashboard` (default): the admin dashboard `jobhost serve` runs (axum and tokio).
//! - `cli` (default, needs `dashboard`): the `jobhost` command line (`cli::main`, clap).
//! - `internals`: unstable; makes the internal modules public for jobhost's own end-to-end
//!   tests and benches. Nothing else should use it.
//!
//! An application that only dispatches needs none of them:
//!
//! ```toml
//! jobhost = { path = "../jobhost/host", default-features = false }
//! ```
//!
//! (jobhost is not published to crates.io: depend on a checkout, or on its git repository.)
//!
//! # Layers
//!
//! The folders are the layers, from the outside in; each one's arrows point only down this list:
//!
//! - `web` — the admin dashboard `jobhost serve` runs; `cli` — the command line; `api` — what
//!   applications and the CLI call to dispatch and follow jobs ([`dispatch`], [`Job`],
//!   [`Client`]).
//! - `queue` — the dispatcher that owns job state, the lifecycle rules it applies, retention,
//!   health, and the doorbell other processes ring.
//! - `catalog` — what may run: the plugin inventory, its watcher and the gate every job passes.
//! - `runner` — one attempt in a child process: the supervisor side in the host, the child side
//!   (which alone loads plugin code) in the worker, and the wire contract between them.
//! - `joblog` — the spec-format job logs.
//! - `config` — `jobhost.toml` and `allowlist.toml`, parsed.
//! - `store` — the durable queue, one folder per backend; `job` — what a job is, its bounds, and
//!   how an attempt of it can end.
//! - `platform` — processes, signals and locks on Unix and Windows; `shared` — bounded file
//!   reads, atomic writes and text helpers.

// Without the command line, the half of the crate that the `jobhost` binary runs (the
// dispatcher, the runner, the workers' side) is compiled but unreachable: an application's
// `Client` starts that binary when no dispatcher serves. Until that half has a feature of its
// own, its items are not dead code but the binary's.
#![cfg_attr(
    not(any(feature = "cli", feature = "internals")),
    allow(dead_code, unused_imports)
)]

/// Declares the internal modules: public with the unstable `internals` feature (for jobhost's
/// own tests and benches), else visible in this crate only.
macro_rules! internal {
    ($($(#[$meta:meta])* mod $name:ident;)*) => {$(
        $(#[$meta])*
        #[cfg(feature = "internals")]
        pub mod $name;
        $(#[$meta])*
        #[cfg(not(feature = "internals"))]
        pub(crate) mod $name;
    )*};
}

internal! {
    mod api;
    mod catalog;
    mod config;
    mod job;
    mod joblog;
    mod platform;
    mod queue;
    mod runner;
    mod shared;
    mod store;
    #[cfg(feature = "dashboard")]
    mod web;
}

#[cfg(feature = "cli")]
pub mod cli;

pub use api::{dispatch, Client, DispatchError, Job, WakeError};
pub use catalog::{gate::Refused, inventory::InventoryError};
pub use config::{
    allowlist::AllowlistError,
    settings::{
        DispatcherSettings, JobDefaults, Limits, Overrides, RetentionSettings, Settings,
        SettingsError, WebSettings,
    },
};
pub use job::{JobSpec, ParamsError, Priority};
pub use joblog::LogOpenError;
pub use store::{
    Attempt, CancelOutcome, ErrorClass, JobId, JobRecord, JobState, Millis, StoreError,
    StoreLocation,
};
