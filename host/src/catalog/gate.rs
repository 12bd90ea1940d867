//! The gate every job passes before it is stored or run: the allowlist must approve
//! `class@method`, a plugin must offer it, and its params must fit those the method declares. A refusal is logged here, as the spec's
//! `Unauthorized job execution attempt` (or `Job not found`), so no caller can forget to.

use crate::{
    catalog::inventory::{Inventory, Offer},
    config::allowlist::{Allowlist, Verdict},
    job::{JobSpec, ParamsError},
    joblog,
};

/// Why a job was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The allowlist does not approve the class.
    #[error("{job} is not approved: class `{class}` is not in the allowlist {allowlist}{hint}")]
    UnknownClass {
        /// `Class@method`.
        job: String,
        /// The class.
        class: String,
        /// The allowlist file.
        allowlist: String,
        /// A hint when the shell probably ate the backslashes.
        hint: String,
    },
    /// The allowlist approves the class but not the method.
    #[error(
        "{job} is not approved: the allowlist {allowlist} approves only {approved} for `{class}`"
    )]
    UnknownMethod {
        /// `Class@method`.
        job: String,
        /// The class.
        class: String,
        /// The allowlist file.
        allowlist: String,
        /// The approved methods, listed.
        approved: String,
    },
    /// Approved, but no plugin in the plugin directory offers it.
    #[error("{job} is approved but not available: {reason}")]
    NotFound {
        /// `Class@method`.
        job: String,
        /// Why.
        reason: String,
    },
}

/// Checks `spec` against the allowlist and the inventory; returns where its class is offered
/// (the version to run).
pub fn authorize<'a>(
    allowlist: &Allowlist,
    inventory: &'a Inventory,
    spec: &JobSpec,
) -> Result<Offer<'a>, Refused> {
    let job = spec.name();
    let allowlist_path = allowlist.path().display().to_string();
    let refusal = match allowlist.check(&spec.class, &spec.method) {
        Verdict::Approved => None,
        Verdict::UnknownClass { unescaped } => Some(Refused::UnknownClass {
            job: job.clone(),
            class: spec.class.clone(),
            allowlist: allowlist_path,
            hint: unescaped
                .map(|class| {
                    format!(
                        "; it matches `{class}` without its backslashes, which the shell removes \
                         from unquoted arguments: quote the class, as in jobhost run '{class}' {}",
                        spec.method
                    )
                })
                .unwrap_or_default(),
        }),
        Verdict::UnknownMethod { approved } => Some(Refused::UnknownMethod {
            job: job.clone(),
            class: spec.class.clone(),
            allowlist: allowlist_path,
            approved: approved.join(", "),
        }),
    };
    if let Some(refused) = refusal {
        joblog::unauthorized(&job);
        return Err(refused);
    }
    let not_found = |reason: String| {
        joblog::not_found(&job, &reason);
        Refused::NotFound {
            job: job.clone(),
            reason,
        }
    };
    let offer = inventory.find(&spec.class).ok_or_else(|| {
        not_found(format!(
            "no plugin in {} offers class `{}`",
            inventory.dir.display(),
            spec.class
        ))
    })?;
    if !offer.class.methods.iter().any(|m| m.name == spec.method) {
        return Err(not_found(format!(
            "class `{}` in {} has no method `{}`",
            spec.class,
            offer.file.path.display(),
            spec.method
        )));
    }
    Ok(offer)
}

/// Checks `spec`'s params against those its method declares in `offer`, when it declares them,
/// with the message the worker would give ([`job_sdk::check_params`]): an unknown name, a
/// required param missing, too many positional ones. The worker checks again (and checks the
/// types).
pub fn params_fit(offer: &Offer<'_>, spec: &JobSpec) -> Result<(), ParamsError> {
    let declared = offer
        .class
        .methods
        .iter()
        .find(|m| m.name == spec.method)
        .and_then(|m| m.params.as_deref());
    match declared.map(|declared| job_sdk::check_params(declared, &spec.params)) {
        Some(Err(message)) => Err(ParamsError::DoNotFit {
            job: spec.name(),
            message,
        }),
        _ => Ok(()),
    }
}
