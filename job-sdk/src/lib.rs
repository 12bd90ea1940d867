//! The SDK for writing [jobhost](https://example.invalid/jobhost) job plugins.
//!
//! A plugin is a Rust `cdylib` that offers one or more job *classes*, each with named
//! *methods*. The host loads it in a fresh worker process for every attempt and calls the method
//! through a stable-ABI vtable, so a plugin built with one Rust compiler runs under a host built
//! with another, and a plugin built against an incompatible SDK is refused with a clear error
//! instead of crashing.
//!
//! You write ordinary Rust: a type per class, a method per job method taking typed params and
//! returning a `Result`, and one [`export_plugin!`] line. No `extern "C"`, no `unsafe`.
//!
//! # Example
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib", "rlib"]  # cdylib for the host; rlib so tests/ and doc tests can use it
//!
//! [dependencies]
//! job-sdk = { path = "../job-sdk" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use job_sdk::{export_plugin, JobClass, JobContext, JobError, Methods};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default)]
//! pub struct SendWelcomeEmail;
//!
//! #[derive(Deserialize)]
//! pub struct HandleParams {
//!     user_id: u64,
//! }
//!
//! #[derive(Serialize)]
//! pub struct Sent {
//!     to: String,
//! }
//!
//! impl JobClass for SendWelcomeEmail {
//!     const NAME: &'static str = r"App\Jobs\SendWelcomeEmail";
//!     const DOC: &'static str = "Welcomes new users.";
//!
//!     fn methods(methods: &mut Methods<Self>) {
//!         methods.add("handle", "Sends the welcome email to `user_id`.", Self::handle);
//!     }
//! }
//!
//! impl SendWelcomeEmail {
//!     fn handle(&self, ctx: &JobContext<'_>, params: HandleParams) -> Result<Sent, JobError> {
//!         if params.user_id == 0 {
//!             // Retrying cannot fix this, so the host will not try again.
//!             return Err(JobError::permanent("user 0 does not exist"));
//!         }
//!         ctx.check_cancelled()?;
//!         ctx.log(format_args!("welcoming user {}", params.user_id));
//!         Ok(Sent { to: format!("user{}@example.com", params.user_id) })
//!     }
//! }
//!
//! export_plugin!(SendWelcomeEmail);
//!
//! // The job logic is plain Rust, so it unit-tests without a host:
//! let ctx = JobContext::detached("job-1", 1);
//! let sent = SendWelcomeEmail.handle(&ctx, HandleParams { user_id: 7 }).unwrap();
//! assert_eq!(sent.to, "user7@example.com");
//! ```
//!
//! # Params
//!
//! Params arrive named (`user_id=123` on the command line, a JSON object) or positional (`123`,
//! a JSON array). When the params type is a struct, positional values fill its fields in
//! declaration order, so the same method serves both. A missing, ill-typed or surplus param is
//! an [`ErrorKind::InvalidParams`](ffi::ErrorKind::InvalidParams) error that names it, and the
//! host does not retry it. Methods without params take [`NoParams`].
//!
//! # Errors, panics and retries
//!
//! Any `std::error::Error` converts into a retryable [`JobError`] with `?`. Use
//! [`JobError::permanent`] for failures a retry cannot fix. A panic in job code is caught at the
//! ABI boundary and reported as a failed attempt carrying the panic message. Plugins must be
//! built with `panic = "unwind"` (the default); `panic = "abort"` fails to compile, because an
//! aborting panic would take the worker down without a word.
//!
//! # Fork safety
//!
//! On Linux the host forks workers from a small helper process, and each worker loads its
//! plugin after the fork. A plugin may instead declare itself *fork-safe*, with
//! `export_plugin!(#[fork_safe] SendWelcomeEmail)`: the helper then loads the library once,
//! before it forks, and every worker starts with it loaded (no `dlopen`, relocation or layout
//! check per job). Declare it only when loading the library runs nothing that must not be
//! shared by many processes: no thread started, no file or socket opened, no random seed or
//! other state set up by a load-time constructor (`#[ctor]`, `.init_array`, a dependency
//! that uses one). Job code is not concerned: it runs in each worker, after the fork. Plain
//! Rust plugins, whose statics are initialised on first use, are fork-safe. The host counts
//! the helper's threads after loading a library, and a plugin that started one is no longer
//! loaded before forking (the helper is replaced, and the rest of its jobs load it themselves).
//!
//! # Cancellation
//!
//! When a job is cancelled or reaches its timeout, the host first asks it to stop:
//! [`JobContext::is_cancelled`] turns true and the job may return
//! [`JobError::cancelled()`](JobError::cancelled) (or use [`JobContext::check_cancelled`]). After a
//! grace period the host kills the worker's whole process group.
#![warn(missing_docs)]

#[cfg(not(panic = "unwind"))]
compile_error!(
    "job-sdk plugins must be built with panic = \"unwind\": with panic = \"abort\" a panicking \
     job would kill its worker before the host could report the panic. Remove `panic = \"abort\"` \
     from your Cargo profile."
);

mod context;
mod error;
pub mod ffi;
mod params;
mod plugin;

pub use context::JobContext;
pub use error::{JobError, JobResult};
pub use ffi::ErrorKind;
pub use params::{check_params, NoParams, Param};
pub use plugin::{JobClass, Methods, Plugin, PARAMS_QUERY};

/// The version of this SDK, recorded in every plugin built against it.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

#[doc(hidden)]
pub mod __private {
    pub use crate::plugin::{classes, invoke};
    pub use abi_stable::{
        library::{__call_root_module_loader, CheckTypeLayout, LibHeader, RootModuleResult},
        prefix_type::PrefixTypeTrait,
        std_types::RStr,
    };

    /// Builds the root module the host loads, around the plugin's entry points.
    pub fn root_module(
        classes: crate::ffi::ClassesFn,
        invoke: crate::ffi::InvokeFn,
        fork_safe: bool,
    ) -> crate::ffi::PluginModRef {
        crate::ffi::PluginMod {
            sdk_version: RStr::from_str(crate::SDK_VERSION),
            classes,
            invoke,
            fork_safe,
        }
        .leak_into_prefix()
    }
}

/// Exports the listed [`JobClass`] types as this library's plugin.
///
/// Use it once, at the crate root of a `cdylib`, as in
/// `job_sdk::export_plugin!(SendWelcomeEmail, ProcessUserReport);` (see the crate-level example).
/// It defines the library's root module; the host finds it by abi_stable's symbol name.
/// `job_sdk::export_plugin!(#[fork_safe] SendWelcomeEmail)` also declares that loading the
/// library is safe before a fork (see [Fork safety](crate#fork-safety)).
#[macro_export]
macro_rules! export_plugin {
    (#[fork_safe] $($class:ty),+ $(,)?) => {
        $crate::__export_plugin!(true; $($class),+);
    };
    ($($class:ty),+ $(,)?) => {
        $crate::__export_plugin!(false; $($class),+);
    };
}

/// What [`export_plugin!`] expands to, with its fork-safety declaration.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_plugin {
    ($fork_safe:literal; $($class:ty),+) => {
        #[doc(hidden)]
        fn __jobhost_plugin() -> &'static $crate::Plugin {
            static PLUGIN: ::std::sync::OnceLock<$crate::Plugin> = ::std::sync::OnceLock::new();
            PLUGIN.get_or_init(|| $crate::Plugin::new()$(.class::<$class>())+)
        }

        #[doc(hidden)]
        extern "C" fn __jobhost_classes() -> $crate::ffi::ClassesResult {
            $crate::__private::classes(__jobhost_plugin)
        }

        #[doc(hidden)]
        extern "C" fn __jobhost_invoke(
            call: &$crate::ffi::Invocation<'_>,
        ) -> $crate::ffi::InvokeResult {
            $crate::__private::invoke(__jobhost_plugin, call)
        }

        #[doc(hidden)]
        extern "C" fn __jobhost_root_module() -> $crate::__private::RootModuleResult {
            $crate::__private::__call_root_module_loader(|| {
                $crate::__private::root_module(__jobhost_classes, __jobhost_invoke, $fork_safe)
            })
        }

        /// The header abi_stable looks for when the host loads this library; the name is
        /// abi_stable's mangled root-module-loader symbol (checked by job-sdk's tests).
        #[doc(hidden)]
        #[no_mangle]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::__private::LibHeader = unsafe {
            $crate::__private::LibHeader::from_constructor::<$crate::ffi::PluginModRef>(
                __jobhost_root_module,
                $crate::__private::CheckTypeLayout::Yes,
            )
        };
    };
}

#[cfg(test)]
mod tests {
    use abi_stable::std_types::{RResult, RString, RVec};

    extern "C" fn no_classes() -> crate::ffi::ClassesResult {
        RResult::ROk(RVec::new())
    }

    extern "C" fn no_invoke(_: &crate::ffi::Invocation<'_>) -> crate::ffi::InvokeResult {
        RResult::ROk(RString::new())
    }

    #[test]
    fn the_root_module_carries_the_fork_safety_declaration() {
        for declared in [false, true] {
            let module = crate::__private::root_module(no_classes, no_invoke, declared);
            assert_eq!(module.fork_safe(), declared);
            assert_eq!(module.sdk_version().as_str(), crate::SDK_VERSION);
        }
    }

    #[test]
    fn export_plugin_uses_abi_stables_root_module_symbol() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
