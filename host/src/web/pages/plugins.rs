//! `GET /plugins`: the plugin directory and the allowlist, the version serving each class,
//! and every file with what it is and what of it the allowlist approves.

use axum::{extract::State, http::StatusCode, response::Response, Extension};
use maud::{html, Markup};

use super::{
    failure_page, page,
    parts::{head, short_hash, text, when},
    Live, Nav,
};
use crate::{
    catalog::inventory::{FileStatus, Inventory, PluginFile},
    web::{
        auth::Auth,
        blocking,
        data::{self, Plugins},
        Shared,
    },
};

/// `GET /plugins`: the inventory, and what the allowlist approves.
pub async fn plugins(State(app): State<Shared>, Extension(auth): Extension<Auth>) -> Response {
    let csrf = auth.csrf();
    let plugins = match blocking(&app, data::plugins).await {
        Ok(Ok(p)) => p,
        Ok(Err(f)) | Err(f) => return failure_page(csrf, &f),
    };
    let main = plugins_main(&plugins);
    page(
        StatusCode::OK,
        "Plugins",
        Nav::Plugins,
        csrf,
        Live::No,
        main,
    )
}

fn plugins_main(plugins: &Plugins) -> Markup {
    let inventory = &plugins.inventory;
    html! {
        h1 { "Plugins" }
        p class="muted" {
            "Plugin directory " code { (text(&inventory.dir.display().to_string())) }
            @if let Ok(list) = &plugins.allowlist {
                "; allowlist " code { (text(&list.path().display().to_string())) }
                @if let Some(state) = &inventory.allowlist {
                    ", in force since " (when(Some(state.since)))
                }
                "."
            }
        }
        @match &plugins.allowlist {
            Ok(_) => {
                @if let Some(error) = inventory.allowlist.as_ref().and_then(|s| s.error.as_ref()) {
                    p class="error" id="allowlist-error" {
                        "The allowlist file was changed but is not valid, so the previous "
                        "version stays in force: " (text(error))
                    }
                }
            }
            Err(e) => p class="error" id="allowlist-error" { (text(e)) },
        }
        (active_classes(inventory))
        @if inventory.files.is_empty() {
            p class="empty" { "No plugin files." }
        }
        div id="plugins" {
            @for file in &inventory.files {
                (plugin_file(plugins, file))
            }
        }
    }
}

/// The table of classes and the versions serving them, with a warning per class offered by
/// several files.
fn active_classes(inventory: &Inventory) -> Markup {
    let classes = inventory.classes();
    html! {
        section {
            h2 { "Serving new jobs" }
            table id="active-classes" {
                (head(&["Class", "File", "Version (blake3)", "Since"]))
                tbody {
                    @if classes.is_empty() {
                        "\n"
                        tr { td colspan="4" class="empty" { "No class is offered." } }
                    }
                    @for class in &classes {
                        "\n"
                        tr data-class=(text(class.class)) {
                            td { code { (text(class.class)) } }
                            td class="file" {
                                (text(&class.file.file_name().unwrap_or_default().to_string_lossy()))
                            }
                            td { code class="hash" title=(text(class.hash)) { (text(short_hash(class.hash))) } }
                            td class="since" { (when(Some(class.since))) }
                        }
                    }
                }
            }
            @for (class, files) in inventory.conflicts() {
                p class="warn conflict" data-class=(text(class)) {
                    "Class " code { (text(class)) } " is offered by "
                    @for (i, file) in files.iter().enumerate() {
                        @if i > 0 { ", " }
                        (text(&file.file_name()))
                    }
                    "; the first serves."
                }
            }
        }
    }
}

/// One file of the plugin directory: what it is now, and the version of it that serves.
fn plugin_file(plugins: &Plugins, file: &PluginFile) -> Markup {
    let name = file.file_name();
    let hash =
        |hash: &str| html! { code class="hash" title=(text(hash)) { (text(short_hash(hash))) } };
    html! {
        @let rejected = matches!(file.status, FileStatus::Rejected { .. });
        section class={ "card plugin-file" @if rejected { " rejected" } } data-file=(text(&name)) {
            @match &file.status {
                FileStatus::Plugin { sdk_version, fork_safe, .. } => {
                    h2 { (text(&name)) }
                    p class="muted small" {
                        "job-sdk " span class="sdk-version" { (text(sdk_version)) }
                        @if *fork_safe {
                            " · " span class="fork-safe" title="Declares that loading it is safe before a fork: the fork server loads it once, and its workers start with it loaded" { "fork-safe" }
                        }
                        " · blake3 " (hash(&file.hash))
                    }
                }
                FileStatus::Rejected { reason } => {
                    h2 { (text(&name)) " " span class="tag bad" { "rejected" } }
                    p class="reason" { (text(reason.as_str())) }
                }
            }
            @if let Some(version) = &file.active {
                @if version.hash != file.hash {
                    p class="kept" {
                        "Still serving its previous version, blake3 " (hash(&version.hash))
                        ", since " (when(Some(version.since))) "."
                    }
                }
                @for class in &version.classes {
                    div class="class" data-class=(text(&class.name)) {
                        h3 { code { (text(&class.name)) } }
                        @if !class.doc.is_empty() {
                            p class="doc" { (text(&class.doc)) }
                        }
                        ul class="methods" {
                            @for method in &class.methods {
                                @let approved = plugins.approved(&class.name, &method.name);
                                li class={ "method " (if approved { "approved" } else { "unapproved" }) }
                                    data-method=(text(&method.name)) {
                                    code { "@" (text(&method.name)) } " "
                                    span class="doc" { (text(&method.doc)) } " "
                                    @if approved {
                                        span class="tag ok" { "approved" }
                                    } @else {
                                        span class="tag warn" { "not in the allowlist" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
