//! `jobhost plugins` names every file in the plugin directory with its classes or the one-line
//! reason it was rejected; bad files do not stop good plugins from working.

use jobhost_e2e::Host;
use serde_json::Value;

#[test]
fn plugins_lists_good_plugins_and_rejects_bad_files_with_reasons() {
    let host = Host::standard();
    host.install_plugin("not_a_plugin_fixture");
    host.install_plugin("other_sdk_fixture");
    host.write("plugins/empty.so", "");
    host.write("plugins/notes.so", "this is a text file, not a library\n");
    host.write("plugins/README.txt", "not a library name, so not listed\n");

    let run = host.run(&["plugins", "--json"]);
    run.expect_code(0);
    let inventory = run.json();
    let files = inventory["files"].as_array().unwrap();
    let status = |name: &str| -> Value {
        files
            .iter()
            .find(|f| f["path"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("{name} not listed: {inventory:#}"))
            .clone()
    };
    let reason = |name: &str| {
        status(name)["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    assert_eq!(files.len(), 8, "{inventory:#}");
    assert!(
        reason("empty.so").starts_with("empty file (an interrupted copy?): "),
        "{}",
        reason("empty.so")
    );
    assert!(
        reason("notes.so").starts_with("not a shared library:"),
        "{}",
        reason("notes.so")
    );
    assert!(
        reason("libnot_a_plugin_fixture.so").starts_with("does not export job-sdk's root module:"),
        "{}",
        reason("libnot_a_plugin_fixture.so")
    );
    let other = reason("libother_sdk_fixture.so");
    assert!(other.starts_with("incompatible SDK layout:"), "{other}");
    assert!(
        other.len() < 300 && !other.contains('\n'),
        "one short line, not abi_stable's report: {other}"
    );

    let welcome = status("libwelcome_email.so");
    assert_eq!(welcome["status"], "plugin");
    assert_eq!(welcome["classes"][0]["name"], r"App\Jobs\SendWelcomeEmail");
    assert_eq!(welcome["classes"][0]["methods"][0]["name"], "handle");
    assert!(!welcome["classes"][0]["methods"][0]["doc"]
        .as_str()
        .unwrap()
        .is_empty());
    assert_eq!(welcome["hash"].as_str().unwrap().len(), 64);

    host.write(
        "allowlist.toml",
        "[jobs]\n'App\\Jobs\\ProcessUserReport' = [\"generate\"]\n",
    );
    let table = host.run(&["plugins"]);
    table.expect_code(0);
    assert!(
        table.stdout.contains("empty.so  REJECTED: empty file ("),
        "{}",
        table.stdout
    );
    let line = |method: &str| {
        table
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(method))
            .unwrap_or_else(|| panic!("no {method} in {}", table.stdout))
            .to_owned()
    };
    assert!(!line("@generate").contains("[not in the allowlist]"));
    assert!(
        line("@send").ends_with("[not in the allowlist]"),
        "{}",
        line("@send")
    );

    host.write("allowlist.toml", jobhost_e2e::SPEC_ALLOWLIST);
    crate::hostile_files::welcome_email_runs(&host);
}

#[test]
fn a_plugin_directory_that_does_not_exist_is_bad_input_naming_it() {
    let host = Host::standard();
    // A setting that names nothing is bad input, for every command that reads the directory.
    for args in [
        &["plugins", "--plugin-dir", "no-such-dir"][..],
        &[
            "run",
            "--plugin-dir",
            "no-such-dir",
            r"App\Jobs\SendWelcomeEmail",
            "handle",
            "user_id=1",
        ],
    ] {
        let run = host.run(args);
        run.expect_code(2);
        assert!(
            run.stderr.contains("cannot read plugin directory")
                && run.stderr.contains("no-such-dir"),
            "{}",
            run.stderr
        );
    }
}
