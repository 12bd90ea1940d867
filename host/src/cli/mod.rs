//! The `jobhost` command line (the binary's side, not the library's): [`args`] is the command
//! line as clap parses it; [`queries`] the read-only commands (`list`, `show`, `stats`);
//! [`output`] how every command prints (stdout that may close, notes on stderr). `main.rs`
//! runs the commands that change things through the library's API.

pub mod args;
pub mod output;
pub mod queries;
