//! End-to-end tests: the real `jobhost` binary, real plugins, real worker processes.
//!
//! Linux only: they look at processes, sessions and process groups through `/proc`. The
//! Windows suite is `windows/main.rs`.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod api;
mod bad_input;
mod browser;
mod dashboard;
mod examples;
mod fixtures;
mod following;
mod hot_swap;
mod inventory;
mod on_demand;
mod postgres;
mod queue;
mod refusals;
mod retries;
mod worker;
