//! What may run: the plugin catalog and the gate in front of the queue.
//!
//! [`inventory`] keeps the catalog of plugin files — a snapshot of each version, what an
//! inspector child found in it ([`inspection`]), which version serves each class — and the
//! allowlist copy in force; [`plugin_file`] looks at a candidate file (type, size, ELF/PE exports) before anything
//! loads it; [`watch`] brings the catalog up to date when the plugin directory or the allowlist
//! changes; [`gate`] is the check every job passes before it is stored: approved by the
//! allowlist, offered by a plugin, with params that fit.

pub mod gate;
mod inspection;
pub mod inventory;
pub mod plugin_file;
pub mod watch;
