//! End-to-end tests: the real `jobhost` binary, real plugins, real worker processes.
#![allow(clippy::unwrap_used)]

mod api;
mod bad_input;
mod examples;
mod fixtures;
mod inventory;
mod queue;
mod refusals;
mod retries;
mod worker;
