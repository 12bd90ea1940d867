//! What the operator writes: `jobhost.toml` and the environment ([`settings`]: where state,
//! plugins and logs live, the store, limits, retention, the dashboard) and `allowlist.toml`
//! ([`allowlist`]: which `class@method` may ever run). Both are parsed here into plain values,
//! with errors that name the file and line; nothing here acts on them. The worker re-reads the
//! allowlist through this module too, so the parser is the same on both sides of the process
//! boundary.

pub mod allowlist;
pub mod settings;
