//! The allowlist: which classes may run, and which of their methods.
//!
//! Only what `allowlist.toml` approves is ever stored or run. The file is a single `[jobs]`
//! table mapping a class name to its approved methods:
//!
//! ```toml
//! [jobs]
//! 'App\Jobs\SendWelcomeEmail' = ["handle"]
//! 'App\Jobs\ProcessUserReport' = ["generate", "send"]
//! ```
//!
//! An empty file approves nothing, and so does a missing one, which is an error
//! ([`AllowlistError::Missing`]): nothing runs until it exists.
//!
//! The allowlist is checked twice: when a job is requested, and again in the worker before any
//! plugin code is loaded. This module only parses and answers questions; logging a refusal is
//! the caller's business.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use crate::shared::text::line_of;

/// Why an allowlist file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    /// The file does not exist: nothing is approved.
    #[error(
        "allowlist {path} does not exist, so no job is approved: create it (a `[jobs]` table \
         naming the classes and methods that may run), or name another with --allowlist or \
         JOBHOST_ALLOWLIST"
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The version of the file in force (its copy in the state directory) could not be read.
    #[error("cannot read the version of allowlist {path} in force")]
    InForce {
        /// The allowlist file (not its copy).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be read.
    #[error("cannot read allowlist {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is malformed.
    #[error("{path}:{line}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl AllowlistError {
    /// The error for reading the allowlist `path` failing with `source`: [`Self::Missing`]
    /// when there is no such file.
    pub fn read(path: &Path, source: std::io::Error) -> Self {
        let path = path.to_path_buf();
        if source.kind() == std::io::ErrorKind::NotFound {
            Self::Missing { path }
        } else {
            Self::Read { path, source }
        }
    }
}

/// A class's approved methods as written, with where each one stands.
type RawMethods = Spanned<Vec<Spanned<String>>>;

/// The file as written. An empty file (or one of comments only) is a valid allowlist that
/// approves nothing, as an empty `[jobs]` table is: emptying the file revokes every approval.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllowlist {
    #[serde(default)]
    jobs: BTreeMap<Spanned<String>, RawMethods>,
}

/// A parsed, validated allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    path: PathBuf,
    jobs: BTreeMap<String, Vec<String>>,
}

/// The answer to "may `class@method` run?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Approved.
    Approved,
    /// The class is not in the allowlist. `unescaped` is set when the class equals an approved
    /// class with its backslashes removed: the shell probably ate them.
    UnknownClass {
        /// The approved class the caller probably meant.
        unescaped: Option<String>,
    },
    /// The class is approved, but not this method.
    UnknownMethod {
        /// The methods that are approved for the class.
        approved: Vec<String>,
    },
}

impl Allowlist {
    /// Reads and validates the allowlist at `path`.
    pub fn load(path: &Path) -> Result<Self, AllowlistError> {
        Self::load_as(path, path)
    }

    /// Reads and validates the allowlist at `path`, a copy of the allowlist file `named`:
    /// errors (and [`Allowlist::path`]) name that file.
    pub fn load_as(path: &Path, named: &Path) -> Result<Self, AllowlistError> {
        let text = crate::shared::files::read_capped_text(
            path,
            crate::shared::files::MAX_ALLOWLIST_BYTES,
            "an allowlist",
        )
        .map_err(|source| AllowlistError::read(named, source))?;
        Self::parse(named, &text)
    }

    /// Parses and validates allowlist `text`, naming `path` in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, AllowlistError> {
        let invalid = |offset: usize, message: String| AllowlistError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, offset),
            message,
        };
        let raw: RawAllowlist = toml::from_str(text)
            .map_err(|e| invalid(e.span().map_or(0, |s| s.start), e.message().to_owned()))?;
        let mut jobs = BTreeMap::new();
        for (class, methods) in raw.jobs {
            let at = class.span().start;
            let class = class.into_inner();
            if let Some(problem) = name_problem(&class, true) {
                return Err(invalid(at, format!("class `{class}` {problem}")));
            }
            let methods_at = methods.span().start;
            let methods = methods.into_inner();
            if methods.is_empty() {
                return Err(invalid(
                    methods_at,
                    format!("class `{class}` has an empty method list; approve at least one method or remove the class"),
                ));
            }
            let mut names: Vec<String> = Vec::with_capacity(methods.len());
            for method in methods {
                let at = method.span().start;
                let method = method.into_inner();
                if let Some(problem) = name_problem(&method, false) {
                    return Err(invalid(
                        at,
                        format!("method `{method}` of `{class}` {problem}"),
                    ));
                }
                if names.contains(&method) {
                    return Err(invalid(
                        at,
                        format!("method `{method}` of `{class}` is listed twice"),
                    ));
                }
                names.push(method);
            }
            jobs.insert(class, names);
        }
        Ok(Self {
            path: path.to_path_buf(),
            jobs,
        })
    }

    /// The file this allowlist was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every approved class with its approved methods.
    pub fn jobs(&self) -> &BTreeMap<String, Vec<String>> {
        &self.jobs
    }

    /// May `class@method` run?
    pub fn check(&self, class: &str, method: &str) -> Verdict {
        match self.jobs.get(class) {
            Some(methods) if methods.iter().any(|m| m == method) => Verdict::Approved,
            Some(methods) => Verdict::UnknownMethod {
                approved: methods.clone(),
            },
            None => Verdict::UnknownClass {
                unescaped: self
                    .jobs
                    .keys()
                    .find(|approved| approved.contains('\\') && approved.replace('\\', "") == class)
                    .cloned(),
            },
        }
    }
}

/// What is wrong with a class or method name, if anything.
fn name_problem(name: &str, is_class: bool) -> Option<&'static str> {
    if name.is_empty() {
        return Some("is empty");
    }
    let ok = |c: char| c.is_alphanumeric() || c == '_' || (is_class && c == '\\');
    if !name.chars().all(ok) {
        return Some(if is_class {
            "may contain only letters, digits, `_` and `\\`"
        } else {
            "may contain only letters, digits and `_`"
        });
    }
    if is_class && (name.starts_with('\\') || name.ends_with('\\') || name.contains("\\\\")) {
        return Some("has an empty namespace segment");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Allowlist, AllowlistError> {
        Allowlist::parse(Path::new("allowlist.toml"), text)
    }

    const SPEC: &str = r#"[jobs]
'App\Jobs\SendWelcomeEmail' = ["handle"]
'App\Jobs\ProcessUserReport' = ["generate", "send"]
"#;

    #[test]
    fn approves_listed_methods_only() {
        let list = parse(SPEC).expect("valid");
        assert_eq!(
            list.check(r"App\Jobs\SendWelcomeEmail", "handle"),
            Verdict::Approved
        );
        assert_eq!(
            list.check(r"App\Jobs\ProcessUserReport", "delete"),
            Verdict::UnknownMethod {
                approved: vec!["generate".into(), "send".into()]
            }
        );
        assert_eq!(
            list.check(r"App\Jobs\Nope", "handle"),
            Verdict::UnknownClass { unescaped: None }
        );
    }

    #[test]
    fn recognises_a_class_whose_backslashes_the_shell_ate() {
        let list = parse(SPEC).expect("valid");
        assert_eq!(
            list.check("AppJobsSendWelcomeEmail", "handle"),
            Verdict::UnknownClass {
                unescaped: Some(r"App\Jobs\SendWelcomeEmail".into())
            }
        );
    }

    #[test]
    fn duplicate_class_is_an_error_naming_the_line() {
        let text = "[jobs]\n'A\\B' = [\"x\"]\n'A\\B' = [\"y\"]\n";
        let err = parse(text).expect_err("duplicate").to_string();
        assert!(err.starts_with("allowlist.toml:3: "), "{err}");
        assert!(err.contains("duplicate key"), "{err}");
    }

    #[test]
    fn empty_method_list_is_an_error_naming_the_line() {
        let text = "[jobs]\n'A\\B' = [\"x\"]\n\n'A\\C' = []\n";
        let err = parse(text).expect_err("empty").to_string();
        assert!(err.starts_with("allowlist.toml:4: "), "{err}");
        assert!(err.contains("empty method list"), "{err}");
    }

    #[test]
    fn malformed_toml_is_an_error_naming_the_line() {
        let err = parse("[jobs]\n'A' = [\"x\"\n")
            .expect_err("malformed")
            .to_string();
        assert!(
            err.starts_with("allowlist.toml:2: ") || err.starts_with("allowlist.toml:3: "),
            "{err}"
        );
    }

    #[test]
    fn bad_names_and_unknown_tables_are_errors() {
        assert!(parse("[jobs]\n'A B' = [\"x\"]\n").is_err());
        assert!(parse("[jobs]\n'A' = [\"x y\"]\n").is_err());
        assert!(parse("[jobs]\n'A' = [\"x\", \"x\"]\n").is_err());
        assert!(
            parse("[jobz]\n'A' = [\"x\"]\n").is_err(),
            "a misspelt table approves nothing by mistake"
        );
    }

    #[test]
    fn an_empty_file_is_valid_and_approves_nothing() {
        for text in ["", "\n", "# nothing may run\n", "[jobs]\n"] {
            let list = parse(text).expect(text);
            assert!(list.jobs().is_empty(), "{text:?}");
            assert_eq!(
                list.check(r"App\Jobs\SendWelcomeEmail", "handle"),
                Verdict::UnknownClass { unescaped: None }
            );
        }
    }
}
