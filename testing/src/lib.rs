//! Support for jobhost's own tests and benches (the store's unit tests, the end-to-end suite,
//! the `postgres` bench), kept out of the library an application depends on: [`TestDatabase`],
//! a throwaway PostgreSQL database.
//!
//! It talks to the server with the `postgres` client alone, not through jobhost, so the
//! library's unit tests can use it too.

use std::time::Duration;

use postgres::{Client, Config, NoTls};

/// A throwaway database for one test or bench run, on the server `JOBHOST_TEST_POSTGRES` names
/// (by default `postgres://postgres@127.0.0.1:5432/postgres`, which `ci/postgres/setup`
/// provides), dropped with it. Its name holds the process id and a counter, so tests in
/// parallel processes or threads never share one.
///
/// It panics where a test should fail, and ends sessions as an administrator would.
pub struct TestDatabase {
    server: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates the database. Panics, naming the server, if it cannot: tests never skip.
    pub fn create() -> Self {
        Self::try_create().unwrap_or_else(|reason| panic!("{reason}"))
    }

    /// Creates the database, or says why it cannot, naming the server.
    pub fn try_create() -> Result<Self, String> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let server = std::env::var("JOBHOST_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!(
            "jobhost_t_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut admin = Self::admin(&server)?;
        // A database of this name is a leftover of a killed process that had our pid.
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .batch_execute(&sql)
                .map_err(|e| format!("{sql} on {}: {}", shown(&server), describe(&e)))?;
        }
        let (scheme, rest) = server.split_once("://").unwrap_or(("postgres", &server));
        let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let query = tail.find('?').map_or("", |at| &tail[at..]);
        let url = format!("{scheme}://{authority}/{name}{query}");
        Ok(Self { server, name, url })
    }

    fn admin(server: &str) -> Result<Client, String> {
        config(server)
            .and_then(|config| connect(&config, "jobhost tests").map_err(|e| describe(&e)))
            .map_err(|reason| {
                format!(
                    "the PostgreSQL server for the tests, {}, is unreachable: {reason}. Start one \
                     with ci/postgres/setup, or name one in JOBHOST_TEST_POSTGRES",
                    shown(server)
                )
            })
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A connection to this database, of an application of its own. Panics if it cannot.
    pub fn client(&self) -> Client {
        config(&self.url)
            .and_then(|config| connect(&config, "jobhost tests").map_err(|e| describe(&e)))
            .unwrap_or_else(|reason| panic!("connecting to {}: {reason}", self.url))
    }

    /// Runs `sql` (statements separated by `;`) on this database. Panics if it fails.
    pub fn batch_execute(&self, sql: &str) {
        self.client()
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    }

    /// Makes the first transaction that inserts a job wait a minute before it can commit (the
    /// database must be migrated): a connection ended meanwhile fails before the commit.
    pub fn stall_first_enqueue(&self) {
        self.batch_execute(
            "CREATE SEQUENCE stall_once; \
             CREATE FUNCTION stall_once() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN IF nextval('stall_once') = 1 THEN PERFORM pg_sleep(60); END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER stall_once BEFORE INSERT ON jobs \
             FOR EACH ROW EXECUTE FUNCTION stall_once()",
        );
    }

    /// Makes every commit of a transaction that inserted a job take a minute (the database
    /// must be migrated): a connection ended meanwhile breaks during the commit.
    pub fn stall_enqueue_commits(&self) {
        self.batch_execute(
            "CREATE FUNCTION stall_commit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(60); RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER stall_commit AFTER INSERT ON jobs \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION stall_commit()",
        );
    }

    /// Waits, up to a minute, until a session of the application `application` on this
    /// database waits for `wait_event` (as `pg_stat_activity.wait_event` names it: `PgSleep`,
    /// `advisory`, `transactionid`, ...); returns its backend's pid. Panics if none does in
    /// time.
    pub fn waiting(&self, application: &str, wait_event: &str) -> i32 {
        let mut client = self.client();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let pid: Option<i32> = client
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 \
                     AND application_name = $2 AND wait_event = $3 LIMIT 1",
                    &[&self.name, &application, &wait_event],
                )
                .unwrap_or_else(|e| panic!("reading pg_stat_activity: {}", describe(&e)))
                .map(|row| row.get(0));
            if let Some(pid) = pid {
                return pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no session of {application} waited for {wait_event}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a session of `application` waits for `wait_event` ([`TestDatabase::waiting`]),
    /// then ends it as an administrator would, waiting until it is gone.
    pub fn terminate_when_waiting(&self, application: &str, wait_event: &str) {
        let pid = self.waiting(application, wait_event);
        let gone: bool = self
            .client()
            .query_one("SELECT pg_terminate_backend($1, 30000)", &[&pid])
            .unwrap_or_else(|e| panic!("terminating session {pid}: {}", describe(&e)))
            .get(0);
        assert!(
            gone,
            "session {pid} of {application} outlived its termination"
        );
    }

    /// Ends the sessions on this database of the application `application` (all of them, when
    /// `None`), as an administrator would with `pg_terminate_backend`, waiting until they are
    /// gone. Returns how many there were. The administrator's own connection is to the server's
    /// database, so it is never among them. Panics if it cannot.
    pub fn terminate(&self, application: Option<&str>) -> usize {
        let who = application.unwrap_or("every application");
        let fail = |e: ::postgres::Error| -> String {
            format!("terminating the sessions of {who}: {}", describe(&e))
        };
        let mut server = Self::admin(&self.server).unwrap_or_else(|reason| panic!("{reason}"));
        let pids: Vec<i32> = server
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 \
                 AND ($2::text IS NULL OR application_name = $2)",
                &[&self.name, &application],
            )
            .map_err(fail)
            .unwrap_or_else(|reason| panic!("{reason}"))
            .iter()
            .map(|row| row.get(0))
            .collect();
        for pid in &pids {
            let gone: bool = server
                .query_one("SELECT pg_terminate_backend($1, 30000)", &[pid])
                .map_err(fail)
                .unwrap_or_else(|reason| panic!("{reason}"))
                .get(0);
            assert!(gone, "session {pid} of {who} outlived its termination");
        }
        pids.len()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let dropped = Self::admin(&self.server).and_then(|mut admin| {
            admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .map_err(|e| describe(&e))
        });
        if let Err(reason) = dropped {
            eprintln!("cannot drop test database {}: {reason}", self.name);
        }
    }
}

/// How long connecting may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection settings of `url`, or why it is not a PostgreSQL URL.
fn config(url: &str) -> Result<Config, String> {
    let mut config: Config = url.parse().map_err(|e| describe(&e))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok(config)
}

/// Connects with `config` as the application `name` (unless the URL names one).
fn connect(config: &Config, name: &str) -> Result<Client, postgres::Error> {
    let mut config = config.clone();
    if config.get_application_name().is_none() {
        config.application_name(name);
    }
    config.connect(NoTls)
}

/// The server `url` names, for messages: its user, hosts, ports and database, never its
/// password.
fn shown(url: &str) -> String {
    let Ok(config) = url.parse::<Config>() else {
        return "(not a PostgreSQL URL)".into();
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
            #[cfg(unix)]
            postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or_default(),
        hosts.join(","),
        config.get_dbname().unwrap_or_default()
    )
}

/// One line for a PostgreSQL error: the server's message with its SQLSTATE, or the client's
/// error with its causes.
fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut line = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(inner) = cause {
        line.push_str(": ");
        line.push_str(&inner.to_string());
        cause = inner.source();
    }
    line
}
