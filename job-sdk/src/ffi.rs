//! The stable-ABI boundary between the host and a plugin.
//!
//! Everything here crosses a `dlopen` boundary, so every type is `#[repr(C)]` and derives
//! [`StableAbi`]: the host checks the whole layout when it loads a plugin and refuses one built
//! against an incompatible SDK with a clean error instead of undefined behaviour. The root module
//! ([`PluginMod`]) and the host's services ([`HostApi`]) are *prefix types*: fields may be added
//! after the field marked `last_prefix_field` in later versions without breaking plugins built
//! against this one. Plugin authors never touch this module; [`crate::export_plugin!`] fills it.

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RResult, RStr, RString, RVec},
    StableAbi,
};

/// One method of a job class, as listed by a plugin.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct MethodInfo {
    /// The method's name, e.g. `handle`.
    pub name: RString,
    /// A one-line description of what the method does.
    pub doc: RString,
}

/// One job class offered by a plugin.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct ClassInfo {
    /// The fully qualified class name, e.g. `App\Jobs\SendWelcomeEmail`.
    pub name: RString,
    /// A one-line description of the class.
    pub doc: RString,
    /// The methods the class offers, in registration order.
    pub methods: RVec<MethodInfo>,
}

/// Why a call into a plugin did not return a result.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The job failed; another attempt may succeed.
    Failed,
    /// The job failed in a way no retry can fix.
    Permanent,
    /// The params could not be mapped onto the method's typed params.
    InvalidParams,
    /// The plugin does not offer the class.
    UnknownClass,
    /// The class does not offer the method.
    UnknownMethod,
    /// Plugin code panicked; the message is the panic payload.
    Panicked,
    /// The job saw its cancellation and stopped.
    Cancelled,
}

/// The error half of every call into a plugin.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiError {
    /// What kind of failure this is.
    pub kind: ErrorKind,
    /// A human-readable message.
    pub message: RString,
}

/// Services the host offers to running plugin code.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostApiRef)))]
#[sabi(missing_field(panic))]
pub struct HostApi {
    /// Writes one line to the running attempt's captured output.
    pub log: extern "C" fn(line: RStr<'_>),
    /// Whether the host has asked the running job to stop.
    #[sabi(last_prefix_field)]
    pub is_cancelled: extern "C" fn() -> bool,
}

/// One call of `class@method` with its params.
#[repr(C)]
#[derive(StableAbi)]
pub struct Invocation<'a> {
    /// The class to instantiate.
    pub class: RStr<'a>,
    /// The method to call on it.
    pub method: RStr<'a>,
    /// The params as JSON: an object (named), an array (positional) or `null`.
    pub params_json: RStr<'a>,
    /// The id of the job this attempt belongs to.
    pub job_id: RStr<'a>,
    /// The attempt number, starting at 1.
    pub attempt: u32,
    /// The host's services.
    pub host: HostApiRef,
}

/// The plugin's root module: the vtable the host dispatches through.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The version of `job-sdk` the plugin was built against.
    pub sdk_version: RStr<'static>,
    /// Lists the plugin's classes and their methods.
    pub classes: extern "C" fn() -> RResult<RVec<ClassInfo>, FfiError>,
    /// Invokes `class@method` with JSON params, returning the JSON result.
    #[sabi(last_prefix_field)]
    pub invoke: extern "C" fn(call: &Invocation<'_>) -> RResult<RString, FfiError>,
    /// Whether loading the library is safe in a process that then forks (see
    /// [`crate::export_plugin!`]'s `#[fork_safe]`). Absent, as in plugins built before it was
    /// added, it reads as `false`.
    #[sabi(missing_field(default))]
    pub fork_safe: bool,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "jobhost_plugin";
    const NAME: &'static str = "jobhost_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// What [`PluginMod::classes`] returns.
pub type ClassesResult = RResult<RVec<ClassInfo>, FfiError>;
/// What [`PluginMod::invoke`] returns.
pub type InvokeResult = RResult<RString, FfiError>;
/// The type of [`PluginMod::classes`].
pub type ClassesFn = extern "C" fn() -> ClassesResult;
/// The type of [`PluginMod::invoke`].
pub type InvokeFn = extern "C" fn(call: &Invocation<'_>) -> InvokeResult;
