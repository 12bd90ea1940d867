//! jobhost: a background-job host that runs approved plugin jobs in isolated worker processes.
//!
//! Jobs are *classes* with named *methods*, compiled as shared-library plugins against the
//! stable-ABI SDK `job-sdk`. Only what `allowlist.toml` approves ever runs, and every attempt
//! runs in a fresh worker process that loads the plugin itself, so a crashing, hanging or
//! runaway job ends that process alone. See `docs/architecture.md` for the whole picture.
//!
//! The modules, from the outside in: [`api`] is what applications and the CLI call to
//! dispatch jobs; [`settings`] and [`allowlist`] read configuration (every file through [`files`], which
//! bounds what it reads); [`job`] describes a
//! requested job; [`authorize`] is the gate (allowlist and plugin inventory, [`inventory`]);
//! [`store`] is the durable queue and [`lifecycle`] the rules for moving a job on, and
//! [`retention`] deletes finished jobs once they are old enough;
//! [`dispatcher`] is the loop that owns job state and runs attempts through [`attempt`], which
//! spawns and supervises a worker with [`platform`] and keeps its output with [`capture`];
//! [`child`] is what the worker itself runs, speaking [`protocol`] and loading plugins with
//! [`loader`] ([`reason`] says why a file is not a plugin); [`joblog`] writes the spec-format logs; [`web`] is the admin dashboard `jobhost serve` runs.

pub mod allowlist;
pub mod api;
pub mod attempt;
pub mod authorize;
pub mod capture;
pub mod child;
pub mod dispatcher;
pub mod files;
pub mod health;
pub mod inventory;
pub mod job;
pub mod joblog;
pub mod lifecycle;
pub mod loader;
pub mod platform;
pub mod plugin_file;
pub mod protocol;
pub mod reason;
pub mod retention;
pub mod settings;
pub mod store;
pub mod text;
pub mod watch;
pub mod web;

pub use api::{dispatch, Client, DispatchError, Job, WakeError};
pub use job::Priority;
pub use store::JobId;
