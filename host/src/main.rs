//! The `jobhost` binary: the command line lives in the library ([`jobhost::cli`]), beside the
//! code it drives.

fn main() -> std::process::ExitCode {
    jobhost::cli::main()
}
