//! End-to-end tests: the real `jobhost` binary, real plugins, real worker processes.
//!
//! Linux only: they look at processes, sessions and process groups through `/proc`. The
//! Windows suite is `windows/main.rs`.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod api;
mod bad_input;
mod bounds;
mod browser;
mod chaos;
mod config_files;
mod dashboard;
mod examples;
mod fixtures;
mod following;
mod forking;
mod hostile_dir;
mod hostile_files;
mod hot_swap;
mod inspection;
mod inventory;
mod logs;
mod on_demand;
mod output;
mod params_check;
mod postgres;
mod queue;
mod recovery;
mod refusals;
mod retention;
mod retries;
mod worker;
