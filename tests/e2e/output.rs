//! What the commands print, and what happens when they cannot: a closed stdout ends a command
//! quietly with exit 0 (as ripgrep does), and an argument that is not UTF-8 is bad input (exit
//! 2) named in one message.

use std::{ffi::OsStr, os::unix::ffi::OsStrExt, process::Stdio};

use jobhost_e2e::{Host, Run};

/// Runs `jobhost ARGS` with a stdout whose reader is closed before the command starts, so its
/// first write fails with a broken pipe.
fn run_with_closed_stdout(host: &Host, args: &[&str]) -> Run {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = host
        .jobhost()
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    Run::from(output)
}

#[test]
fn every_printing_command_ends_quietly_when_stdout_is_closed() {
    let host = Host::standard();
    let id = host
        .enqueue(&[r"App\Jobs\SendWelcomeEmail", "handle", "user_id=1"])
        .to_string();
    host.wait_state(id.parse().unwrap(), &["completed"]);
    let commands: &[&[&str]] = &[
        &["list"],
        &["list", "--json"],
        &["show", &id],
        &["show", &id, "--json"],
        &["stats"],
        &["stats", "--json"],
        &["plugins"],
        &["plugins", "--json"],
        &["run", r"App\Jobs\SendWelcomeEmail", "handle", "user_id=2"],
        &["--help"],
        &["--version"],
    ];
    for args in commands {
        let run = run_with_closed_stdout(&host, args);
        // The local environment mirrors log lines to stderr; nothing else may be there.
        let other: Vec<&str> = run
            .stderr
            .lines()
            .filter(|line| !line.contains("] local."))
            .collect();
        assert_eq!(
            (run.code, other),
            (0, vec![]),
            "jobhost {args:?} with a closed stdout"
        );
    }
}

#[test]
fn run_with_a_closed_stdout_still_stores_its_job() {
    let host = Host::standard();
    let run = run_with_closed_stdout(
        &host,
        &["run", r"App\Jobs\SendWelcomeEmail", "handle", "user_id=7"],
    );
    run.expect_code(0);
    let listed = host.run(&["list", "--json"]);
    listed.expect_code(0);
    let jobs = listed.json();
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    assert_eq!(jobs[0]["params"]["user_id"], 7);
}

#[test]
fn a_failing_stdout_other_than_a_closed_pipe_is_an_error() {
    let host = Host::standard();
    let output = host
        .jobhost()
        .arg("stats")
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    let run = Run::from(output);
    run.expect_code(1);
    assert_eq!(run.error_lines().len(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("cannot write to stdout: No space left on device"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_argument_that_is_not_utf8_is_bad_input_named_in_one_message() {
    let host = Host::standard();
    let bad = OsStr::from_bytes(b"App\\Jobs\\Send\xffEmail");
    let cases: Vec<(Vec<&OsStr>, &str)> = vec![
        (vec!["run".as_ref(), bad, "handle".as_ref()], "argument 2"),
        (
            vec!["run".as_ref(), r"App\Jobs\SendWelcomeEmail".as_ref(), bad],
            "argument 3",
        ),
        (
            vec![
                "run".as_ref(),
                r"App\Jobs\SendWelcomeEmail".as_ref(),
                "handle".as_ref(),
                OsStr::from_bytes(b"user_id=\xfe"),
            ],
            "argument 4",
        ),
        (
            vec!["--state-dir".as_ref(), bad, "list".as_ref()],
            "argument 2",
        ),
        (vec!["list".as_ref(), "--class".as_ref(), bad], "argument 3"),
        (vec![bad], "argument 1"),
    ];
    for (args, named) in cases {
        let output = host.jobhost().args(&args).output().unwrap();
        let run = Run::from(output);
        run.expect_code(2);
        assert_eq!(run.error_lines().len(), 1, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!("{named} is not valid UTF-8")),
            "{args:?}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(r"\xff") || run.stderr.contains(r"\xfe"));
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
    assert!(!host.state_dir().join("attempts").exists(), "nothing ran");
}
