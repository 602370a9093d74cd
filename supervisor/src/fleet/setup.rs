//! Setting up a generation: the apps of a config, each with its program
//! found and its slot sockets bound — reusing the running generation's
//! sockets where app name, address and slot match, so a reload never
//! closes a port that is serving. This is the fleet's only step with
//! effects of its own (finding files, binding sockets), so it runs before
//! the event that takes its result ([`Fleet::new`], [`Fleet::reload`]),
//! through the same [`Host`] as every other effect.

use std::sync::Arc;

use shared::config::{Config, Instances};

use super::{AppRun, Fleet, SetupError, Slot};
use crate::host::Host;
use crate::memory;
use crate::restart::Policy;
use crate::sockets::SlotSocket;

/// A generation ready to start: every app's program and slot sockets.
pub struct Generation {
    pub(super) apps: Vec<AppRun>,
}

/// Builds the runtime form of `config`'s apps (see the module doc);
/// `current` is the running fleet, whose sockets and fleet-state words are
/// kept.
pub fn prepare<H: Host>(
    host: &mut H,
    config: &Config,
    cpus: u32,
    current: Option<&Fleet>,
) -> Result<Generation, SetupError> {
    let current: &[AppRun] = current.map_or(&[], |f| &f.apps);
    // Every app's secrets first, all errors at once, before any socket.
    let refused: Vec<String> = config
        .apps
        .iter()
        .flat_map(|app| host.check_secrets(app))
        .collect();
    if !refused.is_empty() {
        return Err(SetupError::Secrets(refused));
    }
    let mut apps = Vec::new();
    // An app keeps its fleet-state word for as long as it runs (same key
    // as its sockets: name and address), across reloads.
    let words = crate::fleet_state::assign_words(
        &config
            .apps
            .iter()
            .map(|a| (&a.name, a.listen))
            .collect::<Vec<_>>(),
        &current
            .iter()
            .map(|a| ((&a.config.name, a.config.listen), a.word))
            .collect::<Vec<_>>(),
    );
    for (app, word) in config.apps.iter().zip(words) {
        let program = host.resolve(app).map_err(SetupError::Program)?;
        let old = current
            .iter()
            .find(|a| a.config.name == app.name && a.config.listen == app.listen);
        // `heartalk scale` outlives a reload (the operator resets it).
        let scaled = old.and_then(|a| a.scaled);
        if let Some(n) = scaled {
            tracing::info!(event = "scale_kept", app = %app.name, scaled = %instances_text(n), file = %instances_text(app.instances), "`heartalk scale APP file` goes back to the file's instances");
        }
        let count = slot_count(scaled.unwrap_or(app.instances), cpus);
        let reusable: Vec<Arc<SlotSocket>> = old
            .map(|a| a.slots.iter().filter_map(|s| s.socket.clone()).collect())
            .unwrap_or_default();
        let mut sockets: Vec<Arc<SlotSocket>> = reusable.into_iter().take(count).collect();
        if sockets.len() < count {
            let addr = sockets.first().map_or(app.listen, |s| s.addr);
            let fresh =
                host.bind(addr, count - sockets.len())
                    .map_err(|source| SetupError::Bind {
                        app: app.name.clone(),
                        addr: app.listen,
                        source,
                    })?;
            sockets.extend(fresh.into_iter().map(Arc::new));
        }
        tracing::info!(
            event = "listening",
            app = %app.name,
            addr = %sockets[0].addr,
            slots = count,
            "{count} SO_REUSEPORT socket(s)"
        );
        apps.push(AppRun {
            policy: Policy {
                base: app.restart_delay,
                cap: app.restart_delay_max,
                min_uptime: app.min_uptime,
                max_restarts: app.max_restarts,
            },
            limits: memory::Limits {
                soft: app.max_memory,
                hard: app.max_memory_hard,
                strikes: app.memory_strikes,
            },
            config: Arc::new(app.clone()),
            program: Arc::new(program),
            slots: sockets
                .into_iter()
                .enumerate()
                .map(|(i, s)| Slot::new(i, s))
                .collect(),
            word,
            scaled,
        });
    }
    Ok(Generation { apps })
}

/// How many slots `instances` means on `cpus` usable CPUs.
pub(super) fn slot_count(instances: Instances, cpus: u32) -> usize {
    match instances {
        Instances::Count(n) => n.get() as usize,
        Instances::Max => cpus as usize,
    }
}

/// What `heartalk scale` was asked for: a count, `max`, or `file` (the
/// config's `instances`, as `None`).
pub fn parse_instances(text: &str) -> Result<Option<Instances>, String> {
    match text.trim() {
        "file" => Ok(None),
        "max" => Ok(Some(Instances::Max)),
        n => n
            .parse::<std::num::NonZeroU32>()
            .map(|n| Some(Instances::Count(n)))
            .map_err(|_| format!("`{n}` is not a worker count (1 or more), `max` or `file`")),
    }
}

/// `instances` as the config file spells it: `4` or `max`.
pub fn instances_text(instances: Instances) -> String {
    match instances {
        Instances::Count(n) => n.to_string(),
        Instances::Max => "max".into(),
    }
}
