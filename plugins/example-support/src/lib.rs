//! Helpers shared by the example jobhost plugins (`welcome-email`, `user-reports`,
//! `notifications`).
//!
//! This is a plain library, not a plugin: it exports no job class and does not depend on
//! `job-sdk`. It holds what every example job needs around its own logic:
//!
//! - [`storage`]: where the jobs write ([`storage_dir`]) and how they write a whole file so
//!   readers never see half of it ([`write_atomically`]);
//! - [`mail`]: the pieces of an RFC 5322 message the mail-writing jobs share ([`rfc2822_date`],
//!   [`is_plain_address`], [`safe_component`]);
//! - [`testing`]: helpers for the plugins' unit tests: a self-cleaning temporary directory
//!   ([`TestDir`](testing::TestDir)), fixed times ([`at`](testing::at)) and directory listings
//!   ([`file_names`](testing::file_names)).

pub mod mail;
pub mod storage;
pub mod testing;

pub use mail::{is_plain_address, rfc2822_date, safe_component};
pub use storage::{storage_dir, write_atomically};
