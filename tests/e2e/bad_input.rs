//! Bad input gets one clear error naming what was wrong, exit 2, and runs nothing.

use jobhost_e2e::Host;

fn assert_bad_input(args: &[&str], expect: &str) {
    let host = Host::standard();
    let run = host.run(args);
    run.expect_code(2);
    assert!(
        run.stderr.contains(expect),
        "expected {expect:?} in:\n{}",
        run.stderr
    );
    assert!(!host.state_dir().join("attempts").exists(), "nothing ran");
}

const JOB: [&str; 3] = ["run", r"App\Jobs\SendWelcomeEmail", "handle"];

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    JOB.iter()
        .copied()
        .chain(extra.iter().copied())
        .chain(["--wait"])
        .collect()
}

#[test]
fn unknown_priority_is_refused() {
    assert_bad_input(
        &with(&["user_id=1", "--priority", "urgent"]),
        "unknown priority \"urgent\": use high, normal or low",
    );
}

#[test]
fn negative_delay_is_refused() {
    assert_bad_input(
        &with(&["user_id=1", "--delay", "-5"]),
        "\"-5\" is not a non-negative number of seconds",
    );
}

#[test]
fn malformed_key_value_is_refused() {
    assert_bad_input(&with(&["=1"]), "malformed param \"=1\"");
}

#[test]
fn mixing_named_and_positional_params_is_refused() {
    assert_bad_input(
        &with(&["user_id=1", "2"]),
        "params mix named (key=value) and positional values",
    );
}

#[test]
fn invalid_params_json_is_refused() {
    assert_bad_input(
        &with(&["--params-json", "{\"user_id\": "]),
        "--params-json is not valid JSON",
    );
}

#[test]
fn params_over_the_size_limit_are_refused() {
    let host = Host::standard();
    host.settings("limits.max_params_bytes = 1024\n");
    let big = format!("note={}", "x".repeat(2000));
    let run = host.run(&[
        "run",
        r"App\Jobs\SendWelcomeEmail",
        "handle",
        "user_id=1",
        &big,
        "--wait",
    ]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("over the limit of 1024 bytes"),
        "{}",
        run.stderr
    );
}

#[test]
fn malformed_allowlist_is_an_error_naming_file_and_line() {
    let host = Host::standard();
    host.write(
        "allowlist.toml",
        "[jobs]\n'App\\Jobs\\A' = [\"x\"]\n'App\\Jobs\\A' = [\"y\"]\n",
    );
    let run = host.run(&["run", r"App\Jobs\A", "x", "--wait"]);
    run.expect_code(2);
    assert!(run.stderr.contains("allowlist.toml:3: "), "{}", run.stderr);
    assert!(run.stderr.contains("duplicate key"), "{}", run.stderr);

    host.write("allowlist.toml", "[jobs]\n'App\\Jobs\\A' = []\n");
    let run = host.run(&["run", r"App\Jobs\A", "x", "--wait"]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains(r"allowlist.toml:2: class `App\Jobs\A` has an empty method list"),
        "{}",
        run.stderr
    );
}

#[test]
fn bad_settings_file_is_an_error_naming_file_and_line() {
    let host = Host::standard();
    host.write(
        "jobhost.toml",
        "plugin_dir = \"plugins\"\n[defaults]\nretry_delay = -1\n",
    );
    let run = host.run(&["plugins"]);
    run.expect_code(2);
    assert!(run.stderr.contains("jobhost.toml:3: "), "{}", run.stderr);
    assert!(
        run.stderr.contains("non-negative number of seconds"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_job_id_is_a_canonical_decimal_number_in_every_command() {
    let host = Host::standard();
    let id = host.enqueue(&[r"Tests\Misbehave", "ok", "--delay", "3600"]);
    assert_eq!(id, 1);
    for command in ["show", "cancel", "retry", "wait"] {
        for text in [
            "+1",
            "00001",
            "01",
            " 1",
            "1 ",
            "1e3",
            "0",
            "-1",
            "0x1",
            "9223372036854775808",
        ] {
            let run = host.run(&[command, "--", text]);
            run.expect_code(2);
            assert!(
                run.stderr.contains(&format!("{text:?} is not a job id")),
                "{command} {text:?}: {}",
                run.stderr
            );
        }
    }
    // Nothing happened to job 1.
    assert_eq!(host.show(id)["job"]["state"], "scheduled");
}
