//! jobhost: a background-job host that runs approved plugin jobs in isolated worker processes.
//!
//! Jobs are *classes* with named *methods*, compiled as shared-library plugins against the
//! stable-ABI SDK `job-sdk`. Only what `allowlist.toml` approves ever runs, and every attempt
//! runs in a fresh worker process that loads the plugin itself, so a crashing, hanging or
//! runaway job ends that process alone. See `docs/architecture.md` for the whole picture.
//!
//! The folders are the layers, from the outside in; each one's arrows point only down this list:
//!
//! - [`web`] — the admin dashboard `jobhost serve` runs; [`api`] — what applications and the CLI
//!   call to dispatch and follow jobs ([`dispatch`], [`Job`], [`Client`]).
//! - [`queue`] — the dispatcher that owns job state, the lifecycle rules it applies, retention,
//!   health, and the doorbell other processes ring.
//! - [`catalog`] — what may run: the plugin inventory, its watcher and the gate every job passes.
//! - [`runner`] — one attempt in a child process: the supervisor side in the host, the child side
//!   (which alone loads plugin code) in the worker, and the wire contract between them.
//! - [`joblog`] — the spec-format job logs.
//! - [`config`] — `jobhost.toml` and `allowlist.toml`, parsed.
//! - [`store`] — the durable queue, one folder per backend; [`job`] — what a job is, its bounds, and
//!   how an attempt of it can end.
//! - [`platform`] — processes, signals and locks on Unix and Windows; [`shared`] — bounded file
//!   reads, atomic writes and text helpers.

pub mod api;
pub mod catalog;
pub mod config;
pub mod job;
pub mod joblog;
pub mod platform;
pub mod queue;
pub mod runner;
pub mod shared;
pub mod store;
pub mod web;

pub use api::{dispatch, Client, DispatchError, Job, WakeError};
pub use job::Priority;
pub use store::JobId;
