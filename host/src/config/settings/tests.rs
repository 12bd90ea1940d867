use std::net::IpAddr;

use super::*;

fn resolve(toml: &str, env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(CONFIG_FILE), toml).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Settings::resolve_with(&Overrides::default(), dir.path(), |name| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
}

#[test]
fn the_dashboard_listens_on_loopback_8000_by_default_with_a_generated_token() {
    let web = resolve("", &[]).unwrap().web;
    assert!(web.enabled);
    assert_eq!(web.listen, "127.0.0.1:8000".parse().unwrap());
    assert_eq!(web.admin_token, None);
}

#[test]
fn web_settings_come_from_the_file_and_the_token_also_from_the_environment() {
    let toml =
        "web.enabled = false\nweb.listen = \"127.0.0.1:0\"\nweb.admin_token = \"from-file\"\n";
    let web = resolve(toml, &[]).unwrap().web;
    assert!(!web.enabled);
    assert_eq!(web.listen.port(), 0);
    assert_eq!(web.admin_token.as_deref(), Some("from-file"));
    let web = resolve(toml, &[("JOBHOST_ADMIN_TOKEN", "from-env")])
        .unwrap()
        .web;
    assert_eq!(web.admin_token.as_deref(), Some("from-env"));
    assert!(
        !format!("{web:?}").contains("from-env"),
        "Debug hides the token"
    );
}

#[test]
fn trusted_proxies_are_addresses_and_cidr_ranges() {
    let web = resolve(
        "[web]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"fd00::/8\", \"::ffff:192.0.2.1\"]\n",
        &[],
    )
    .unwrap()
    .web;
    let trusted = |ip: &str| {
        let ip: IpAddr = ip.parse().unwrap();
        web.trusted_proxies.iter().any(|r| r.contains(ip))
    };
    for ip in [
        "127.0.0.1",
        "::ffff:127.0.0.1",
        "10.255.0.1",
        "fd12::1",
        "192.0.2.1",
    ] {
        assert!(trusted(ip), "{ip}");
    }
    for ip in ["127.0.0.2", "11.0.0.1", "fe80::1", "::1", "192.0.2.2"] {
        assert!(!trusted(ip), "{ip}");
    }
    assert!(IpRange::parse("0.0.0.0/0")
        .unwrap()
        .contains("8.8.8.8".parse().unwrap()));
    assert!(!IpRange::parse("0.0.0.0/0")
        .unwrap()
        .contains("::2".parse().unwrap()));
    assert_eq!(resolve("", &[]).unwrap().web.trusted_proxies, []);
    for (bad, why) in [
        ("localhost", "such as 127.0.0.1"),
        ("10.0.0.0/33", "0 to 32"),
        ("::1/129", "0 to 128"),
        ("10.0.0.0/", "0 to 32"),
        ("10.0.0.0/+8", "0 to 32"),
        ("", "such as"),
    ] {
        let error = resolve(&format!("web.trusted_proxies = [\"{bad}\"]\n"), &[]).unwrap_err();
        assert!(
            matches!(error, SettingsError::Parse { line: 1, .. }),
            "{bad}: {error}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!("{bad:?} is not an IP address or CIDR range")),
            "{message}"
        );
        assert!(message.contains(why), "{message}");
    }
}

#[test]
fn bad_web_settings_are_refused() {
    let listen = resolve("\n[web]\nlisten = \"localhost\"\n", &[]).unwrap_err();
    assert!(
        matches!(listen, SettingsError::Parse { line: 3, .. }),
        "{listen}"
    );
    let empty = resolve("web.admin_token = \"  \"\n", &[]).unwrap_err();
    assert!(empty.to_string().contains("must not be empty"), "{empty}");
    let env = resolve("", &[("JOBHOST_ADMIN_TOKEN", "")]).unwrap_err();
    assert!(
        matches!(
            env,
            SettingsError::Env {
                name: "JOBHOST_ADMIN_TOKEN",
                ..
            }
        ),
        "{env}"
    );
    assert!(
        resolve("web.port = 1\n", &[]).is_err(),
        "unknown keys are refused"
    );
}

#[test]
fn autostart_is_on_unless_the_file_or_the_environment_turns_it_off() {
    assert!(resolve("", &[]).unwrap().dispatcher.autostart);
    let off = "[dispatcher]\nautostart = false\n";
    assert!(!resolve(off, &[]).unwrap().dispatcher.autostart);
    let on = [("JOBHOST_AUTOSTART", "true")];
    assert!(resolve(off, &on).unwrap().dispatcher.autostart);
    let e = resolve("", &[("JOBHOST_AUTOSTART", "maybe")]).unwrap_err();
    assert!(
        e.to_string().contains("JOBHOST_AUTOSTART") && e.to_string().contains("true or false"),
        "{e}"
    );
}

#[test]
fn the_runner_forks_on_linux_unless_the_file_or_the_environment_says_exec() {
    assert_eq!(resolve("", &[]).unwrap().dispatcher.runner, Runner::DEFAULT);
    #[cfg(target_os = "linux")]
    assert_eq!(Runner::DEFAULT, Runner::Fork);
    let exec = "[dispatcher]\nrunner = \"exec\"\n";
    assert_eq!(resolve(exec, &[]).unwrap().dispatcher.runner, Runner::Exec);
    let fork = [("JOBHOST_RUNNER", "fork")];
    #[cfg(target_os = "linux")]
    assert_eq!(resolve(exec, &fork).unwrap().dispatcher.runner, Runner::Fork);
    #[cfg(not(target_os = "linux"))]
    assert_eq!(
        resolve(exec, &fork).unwrap_err().to_string(),
        "environment variable JOBHOST_RUNNER: the fork runner needs Linux; use \"exec\" here"
    );
    let e = resolve("", &[("JOBHOST_RUNNER", "spawn")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "environment variable JOBHOST_RUNNER=\"spawn\": must be exec or fork"
    );
    let e = resolve("[dispatcher]\nrunner = \"threads\"\n", &[]).unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains(":2:") && e.contains("unknown variant `threads`, expected `exec` or `fork`"),
        "{e}"
    );
}

#[test]
fn a_dispatcher_started_on_demand_resolves_the_settings_of_its_starter() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(CONFIG_FILE);
    std::fs::write(
        &file,
        "state_dir = \"var/state\"\n[dispatcher]\nslots = 2\nshutdown_grace = 7\nautostart = false\nrunner = \"exec\"\n",
    )
    .unwrap();
    let caller_env = |name: &str| {
        [
            ("JOBHOST_SLOTS", "3"),
            ("JOBHOST_ENV", "staging"),
            ("JOBHOST_LOG_DIR", "elsewhere/logs"),
        ]
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| (*v).to_owned())
    };
    let starter = Settings::resolve_with(&Overrides::default(), dir.path(), caller_env).unwrap();
    // The dispatcher runs in another directory, with nothing but what it is handed.
    let handed: Vec<(&str, String)> = starter
        .to_env()
        .into_iter()
        .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
        .collect();
    let elsewhere = tempfile::tempdir().unwrap();
    let started = Settings::resolve_with(&Overrides::default(), elsewhere.path(), |name| {
        handed
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .unwrap();
    assert_eq!(started.dispatcher, starter.dispatcher);
    assert_eq!(started.dispatcher.slots, 3);
    assert!(!started.dispatcher.autostart);
    assert_eq!(started.dispatcher.runner, Runner::Exec);
    assert_eq!(
        (&started.state_dir, &started.log_dir, &started.plugin_dir),
        (&starter.state_dir, &starter.log_dir, &starter.plugin_dir)
    );
    assert_eq!(
        (&started.env, &started.store),
        (&starter.env, &starter.store)
    );
    assert_eq!(started.limits, starter.limits);
    assert_eq!(started.web, starter.web);
}

#[test]
fn the_store_is_sqlite_in_the_state_directory_unless_a_postgres_url_is_given() {
    let settings = resolve("state_dir = \"var/state\"\n", &[]).unwrap();
    assert_eq!(
        settings.store,
        StoreLocation::Sqlite(settings.state_dir.join("jobs.sqlite3"))
    );
    assert_eq!(settings.dispatcher.lease, Duration::from_secs(15));
}

#[cfg(feature = "postgres")]
#[test]
fn a_postgres_url_names_the_store() {
    let file = "store = \"postgres://jobs:secret@db.example/queue\"\ndispatcher.lease = 2.5\n";
    let settings = resolve(file, &[]).unwrap();
    assert_eq!(
        settings.store,
        StoreLocation::Postgres("postgres://jobs:secret@db.example/queue".into())
    );
    assert_eq!(settings.dispatcher.lease, Duration::from_millis(2500));
    // The environment wins over the file, and is handed on to a dispatcher started for us.
    let env = [("JOBHOST_STORE", "postgresql://other/db")];
    let settings = resolve(file, &env).unwrap();
    assert_eq!(
        settings.store,
        StoreLocation::Postgres("postgresql://other/db".into())
    );
    assert!(settings
        .to_env()
        .contains(&("JOBHOST_STORE", "postgresql://other/db".into())));
}

#[cfg(not(feature = "postgres"))]
#[test]
fn without_the_postgres_feature_a_postgres_url_is_one_error_saying_so() {
    let file = "store = \"postgres://jobs:secret@db.example/queue\"\n";
    for (file, env) in [
        (file, &[][..]),
        ("", &[("JOBHOST_STORE", "postgresql://other/db")][..]),
    ] {
        let error = resolve(file, env).unwrap_err();
        let chain = format!("{:#}", anyhow::Error::from(error));
        assert!(
            chain.contains(
                "this jobhost was built without PostgreSQL support (the `postgres` feature)"
            ),
            "{chain}"
        );
        assert!(
            !chain.contains("secret"),
            "the password is never shown: {chain}"
        );
    }
}

#[test]
fn a_store_that_is_not_a_postgres_url_and_a_zero_lease_are_refused() {
    let error = resolve("store = \"mysql://jobs:secret@db/queue\"\n", &[]).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("jobhost.toml"), "{message}");
    let chain = format!("{:#}", anyhow::Error::from(error));
    assert!(chain.contains("mysql://"), "{chain}");
    assert!(
        !chain.contains("secret"),
        "the password is never shown: {chain}"
    );

    let error = resolve("", &[("JOBHOST_STORE", "not a url")]).unwrap_err();
    assert!(error.to_string().contains("JOBHOST_STORE"), "{error}");

    let error = resolve("dispatcher.lease = 0\n", &[]).unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("jobhost.toml: dispatcher.lease 0 s is out of range: allowed 1 s to 3600 s"),
        "{error}"
    );
}

#[test]
fn every_setting_is_checked_against_its_bound_naming_where_it_came_from() {
    for (toml, expect) in [
        ("defaults.timeout = 0\n", "jobhost.toml: defaults.timeout 0 s is out of range: allowed 0.001 s to 604800 s (7 days)"),
        ("defaults.timeout = 0.0004\n", "defaults.timeout 0.0004 s is out of range"),
        ("defaults.retries = 4294967295\n", "defaults.retries 4294967295 is out of range: allowed 0 to 1000"),
        ("defaults.retry_delay = 1e12\n", "defaults.retry_delay 1000000000000 s is out of range"),
        ("dispatcher.slots = 0\n", "dispatcher.slots 0 is out of range: allowed 1 to 256"),
        ("dispatcher.slots = 2000\n", "dispatcher.slots 2000 is out of range: allowed 1 to 256"),
        ("dispatcher.idle_exit = 1e300\n", "dispatcher.idle_exit "),
        ("dispatcher.shutdown_grace = 1e7\n", "dispatcher.shutdown_grace "),
        ("limits.kill_grace = 7200\n", "limits.kill_grace 7200 s is out of range: allowed 0 s to 3600 s"),
        ("limits.inspect_timeout = 0\n", "limits.inspect_timeout 0 s is out of range: allowed 0.001 s to 600 s"),
        ("limits.inspect_timeout = 3600\n", "limits.inspect_timeout 3600 s is out of range"),
        ("limits.max_params_bytes = 0\n", "limits.max_params_bytes 0 is out of range: allowed 1 to 16777216"),
        ("limits.max_params_depth = 127\n", "limits.max_params_depth 127 is out of range: allowed 1 to 100"),
        ("limits.max_output_bytes = 1e3\n", "invalid type"),
        ("limits.max_output_bytes = 2000000000\n", "limits.max_output_bytes 2000000000 is out of range"),
        ("limits.max_plugin_bytes = 0\n", "limits.max_plugin_bytes 0 is out of range: allowed 1 to 4294967296"),
        ("limits.max_plugin_bytes = 5000000000\n", "limits.max_plugin_bytes 5000000000 is out of range"),
    ] {
        let error = resolve(toml, &[]).unwrap_err().to_string();
        assert!(error.contains(expect), "{toml}: {error}");
    }
    for (var, value, expect) in [
        ("JOBHOST_TIMEOUT", "0", "environment variable JOBHOST_TIMEOUT=\"0\": out of range: allowed 0.001 s to 604800 s (7 days)"),
        ("JOBHOST_RETRIES", "5000", "JOBHOST_RETRIES=\"5000\": out of range: allowed 0 to 1000"),
        ("JOBHOST_RETRY_DELAY", "1e300", "JOBHOST_RETRY_DELAY"),
        ("JOBHOST_SLOTS", "2000", "JOBHOST_SLOTS=\"2000\": out of range: allowed 1 to 256"),
        ("JOBHOST_SLOTS", "0", "JOBHOST_SLOTS=\"0\": out of range"),
    ] {
        let error = resolve("", &[(var, value)]).unwrap_err().to_string();
        assert!(error.contains(expect), "{var}={value}: {error}");
    }
    let dir = tempfile::tempdir().unwrap();
    let slots = Overrides {
        slots: Some(2000),
        ..Overrides::default()
    };
    let error = Settings::resolve_with(&slots, dir.path(), |_| None).unwrap_err();
    assert_eq!(
        error.to_string(),
        "--slots 2000 is out of range: allowed 1 to 256"
    );
    let settings = resolve("dispatcher.slots = 256\ndefaults.timeout = 0.001\n", &[]).unwrap();
    assert_eq!(settings.dispatcher.slots, 256);
    assert_eq!(settings.defaults.timeout, Duration::from_millis(1));
    assert!(resolve("", &[]).unwrap().dispatcher.slots <= MAX_SLOTS);
}

#[test]
fn an_empty_path_is_refused_naming_where_it_was_given() {
    for var in [
        "JOBHOST_STATE_DIR",
        "JOBHOST_LOG_DIR",
        "JOBHOST_PLUGIN_DIR",
        "JOBHOST_ALLOWLIST",
        "JOBHOST_CONFIG",
    ] {
        let error = resolve("", &[(var, "")]).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "environment variable {var} is empty: give a path, or leave it out for the default"
            )
        );
    }
    let error = resolve("state_dir = \"\"\n", &[]).unwrap_err().to_string();
    assert!(
        error.ends_with(
            "jobhost.toml: state_dir is empty: give a path, or leave it out for the default"
        ),
        "{error}"
    );
    let dir = tempfile::tempdir().unwrap();
    let flag = Overrides {
        state_dir: Some(PathBuf::new()),
        ..Overrides::default()
    };
    let error = Settings::resolve_with(&flag, dir.path(), |_| None).unwrap_err();
    assert!(
        error.to_string().starts_with("--state-dir is empty"),
        "{error}"
    );
}

#[test]
fn a_bad_environment_name_is_named_where_it_was_given() {
    let error = resolve("env = \"a b\"\n", &[]).unwrap_err().to_string();
    assert!(
        error.contains("jobhost.toml: env: environment name \"a b\""),
        "{error}"
    );
    let error = resolve("", &[("JOBHOST_ENV", "")]).unwrap_err().to_string();
    assert!(
        error.starts_with("environment variable JOBHOST_ENV: "),
        "{error}"
    );
}

#[test]
fn retention_defaults_to_a_day_for_completed_and_cancelled_jobs_and_a_week_for_failed() {
    let retention = resolve("", &[]).unwrap().retention;
    let day = Duration::from_secs(86_400);
    assert_eq!(retention.period(JobState::Completed), Some(day));
    assert_eq!(retention.period(JobState::Cancelled), Some(day));
    assert_eq!(retention.period(JobState::Failed), Some(day * 7));
    assert_eq!(retention.period(JobState::Queued), None);
    assert_eq!(retention.interval, Duration::from_secs(30));
}

#[test]
fn retention_periods_are_seconds_and_zero_keeps_jobs_forever() {
    let toml = "[retention]\ncompleted = 3600\nfailed = 0\ncancelled = 0.5\ninterval = 0.25\n";
    let retention = resolve(toml, &[]).unwrap().retention;
    assert_eq!(retention.completed, Some(Duration::from_secs(3600)));
    assert_eq!(retention.failed, None);
    assert_eq!(retention.cancelled, Some(Duration::from_millis(500)));
    assert_eq!(retention.interval, Duration::from_millis(250));
    // A key left out keeps its default.
    let retention = resolve("retention.failed = 60\n", &[]).unwrap().retention;
    assert_eq!(retention.failed, Some(Duration::from_secs(60)));
    assert_eq!(retention.completed, RetentionSettings::default().completed);
}

#[test]
fn bad_retention_values_are_refused_naming_the_key_and_the_range() {
    for (toml, key, shown) in [
        (
            "retention.completed = -1\n",
            "retention.completed",
            "not -1",
        ),
        (
            "retention.failed = \"7d\"\n",
            "retention.failed",
            "not \"7d\"",
        ),
        (
            "retention.cancelled = nan\n",
            "retention.cancelled",
            "not nan",
        ),
        (
            "retention.completed = 1e11\n",
            "retention.completed",
            "not 100000000000",
        ),
        (
            "retention.interval = 0\n",
            "retention.interval",
            "more than 0",
        ),
        (
            "retention.interval = true\n",
            "retention.interval",
            "not true",
        ),
    ] {
        let error = resolve(toml, &[]).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(&error, SettingsError::Retention { key: k, .. } if *k == key),
            "{toml}: {message}"
        );
        assert!(message.contains("jobhost.toml: "), "{message}");
        assert!(
            message.contains(&format!("{key} must be a number of seconds")),
            "{message}"
        );
        assert!(message.contains(shown), "{toml}: {message}");
    }
    let unknown = resolve("retention.running = 1\n", &[]).unwrap_err();
    assert!(unknown.to_string().contains("running"), "{unknown}");
}
