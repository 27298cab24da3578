//! The policy history in the daemon: `policy history NAME`, `policy show NAME@VERSION` and
//! `policy rollback NAME [VERSION]` (the old text applied again, atomically like `apply`).
use crate::{
    control::{PolicyText, Response},
    daemon::{
        core::Shared,
        history::{Entry, History},
        reload,
    },
};

fn entries(shared: &Shared, name: &str) -> Result<Vec<Entry>, String> {
    let h = History::new(&shared.ctl.cfg.data_dir);
    let (entries, skipped) = h.entries(name)?;
    for s in skipped {
        tracing::warn!("policy history: {s}");
    }
    if entries.is_empty() {
        return Err(format!(
            "no policy named {name:?} was ever applied by this daemon (no history in {})",
            h.dir().display()
        ));
    }
    Ok(entries)
}

fn without_text(e: &Entry) -> Entry {
    Entry { text: String::new(), ..e.clone() }
}

/// `policy history NAME`: every recorded version, oldest first, without their texts.
pub(crate) fn history(shared: &Shared, name: &str) -> Response {
    match entries(shared, name) {
        Ok(v) => Response { history: Some(v.iter().map(without_text).collect()), ..Response::ok() },
        Err(e) => Response::err(e),
    }
}

/// `policy show NAME@VERSION`: that version's entry, with its text.
pub(crate) fn version(shared: &Shared, name: &str, spec: &str) -> Response {
    match entries(shared, name).and_then(|v| History::find(name, &v, spec).cloned()) {
        Ok(e) => Response { history: Some(vec![e]), ..Response::ok() },
        Err(e) => Response::err(e),
    }
}

/// `policy rollback NAME [VERSION]`: applies the text of VERSION (default: the version in
/// force before the current one) as `policy apply` does; the `policy_reload` event says
/// `source: rollback`.
pub(crate) fn rollback(shared: &Shared, name: &str, spec: Option<&str>, by: (u32, u32)) -> Response {
    match target(shared, name, spec) {
        Ok(target) => {
            let file = PolicyText { source: "rollback".into(), text: target.text.clone() };
            let parsed = reload::check(&file);
            let applied = reload::apply_recorded(shared, file, parsed, Some(by), Some(target.number));
            reload::rebind(shared);
            crate::daemon::dns::reconcile(shared, &shared.own());
            match applied {
                Ok((summary, installed)) => Response {
                    result: Some(installed.result().into()),
                    policy: Some(summary),
                    history: Some(vec![without_text(&target)]),
                    ..Response::ok()
                },
                Err(e) => Response::err(format!(
                    "policy {name} version {} not applied, the one in force stays:\n{e}",
                    target.number
                )),
            }
        }
        Err(e) => Response::err(e),
    }
}

fn target(shared: &Shared, name: &str, spec: Option<&str>) -> Result<Entry, String> {
    let entries = entries(shared, name)?;
    let current = {
        let own = shared.own();
        own.policies.slot_of(name).and_then(|s| own.policies.summary(s)).map(|s| s.version)
    };
    let target = match spec {
        Some(v) => History::find(name, &entries, v)?.clone(),
        None => {
            let oks: Vec<&Entry> = entries.iter().filter(|e| e.result == "ok").collect();
            // The version in force is the last `ok` of its version; the one before it that
            // differs is the previous one.
            let upto = current.as_ref().and_then(|c| oks.iter().rposition(|e| &e.version == c)).unwrap_or(oks.len());
            oks[..upto]
                .iter()
                .rev()
                .find(|e| Some(&e.version) != current.as_ref())
                .map(|e| (*e).clone())
                .ok_or_else(|| format!("policy {name:?} has no earlier version to roll back to (see `agent-guard policy history {name}`)"))?
        }
    };
    if target.result != "ok" {
        return Err(format!("version {} of policy {name:?} was refused when it was applied ({}); pick one whose result is ok", target.number, target.error.as_deref().unwrap_or("error")));
    }
    if Some(&target.version) == current.as_ref() {
        return Err(format!("policy {name:?} is already at version {} ({})", target.number, target.version));
    }
    Ok(target)
}
