//! The worker's configuration, read once from the environment at start-up
//! (API.md §14). Only the variables the current milestone uses are read.
//!
//! Parsing follows the contract's forgiving rules, inherited from the
//! Node.js service: integers are base 10 and an invalid value means the
//! default; booleans are `true`, `1` or `yes` in any case, anything else
//! set means false. A bad value therefore never stops a worker, which
//! matters because a worker that fails to start is retried in a loop by the
//! supervisor.
//!
//! The `.env` file cascade of §14 is not implemented yet.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the worker reads from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `NODE_ENV`: `development` (default), `production` or `test`.
    pub node_env: String,
    /// `HOST`: address to bind when no sockets are inherited.
    pub host: String,
    /// `PORT`: port to bind when no sockets are inherited.
    pub port: u16,
    /// `SERVICE_VERSION`: reported in health and `/` bodies.
    pub service_version: String,
    /// `HEARTALK_WORKER_ID`: the supervisor slot, sent in `X-Worker-Id`.
    pub worker_id: u32,
    /// `SHUTDOWN_GRACE_SECS`: how long in-flight work may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// `KEYWORDS_CONFIG`: the router table.
    pub keywords_config: PathBuf,
    /// Chain-of-thought / self-consistency settings (§7).
    pub reasoning: ReasoningSettings,
    /// Which upstream provider mode is in force (§10).
    pub provider: ProviderSettings,
}

/// The reasoning switches, reported by `/api/v1/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasoningSettings {
    pub chain_of_thought: bool,
    pub self_consistency: bool,
    pub samples: u32,
    pub show_reasoning_process: bool,
}

/// The provider selection inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSettings {
    /// `AI_PROVIDER_MODE`, lower-cased: `auto` (default), `live`, `simulated`.
    pub mode: String,
    /// `AI_PROVIDER_NAME`: the label reported in live mode.
    pub name: String,
    /// Whether `BYTEPLUS_API_KEY` is non-empty. The key itself is not kept
    /// here so it cannot leak through a `Debug` log of the settings.
    pub has_api_key: bool,
}

impl ProviderSettings {
    /// Simulated mode: forced by `AI_PROVIDER_MODE=simulated`, or implied
    /// by an empty `BYTEPLUS_API_KEY` (§13 p: no provider config is not a
    /// start-up failure any more).
    pub fn simulated(&self) -> bool {
        self.mode == "simulated" || !self.has_api_key
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Builds settings from any key lookup; `from_env` with the process
    /// environment, tests with a map.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let string = |k: &str, default: &str| get(k).unwrap_or_else(|| default.to_string());
        let nonempty = |k: &str, default: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        Settings {
            node_env: nonempty("NODE_ENV", "development"),
            host: nonempty("HOST", "localhost"),
            port: parse_int(get("PORT").as_deref(), 8001),
            service_version: nonempty("SERVICE_VERSION", "1.0.0"),
            worker_id: parse_int(get("HEARTALK_WORKER_ID").as_deref(), 0),
            shutdown_grace: Duration::from_secs(parse_int(
                get("SHUTDOWN_GRACE_SECS").as_deref(),
                30,
            )),
            keywords_config: PathBuf::from(nonempty("KEYWORDS_CONFIG", "config/keywords.json")),
            reasoning: ReasoningSettings {
                chain_of_thought: parse_bool(get("ENABLE_CHAIN_OF_THOUGHT").as_deref(), true),
                self_consistency: parse_bool(get("ENABLE_SELF_CONSISTENCY").as_deref(), true),
                samples: parse_int(get("SELF_CONSISTENCY_SAMPLES").as_deref(), 3),
                show_reasoning_process: parse_bool(get("SHOW_REASONING_PROCESS").as_deref(), false),
            },
            provider: ProviderSettings {
                mode: nonempty("AI_PROVIDER_MODE", "auto").to_ascii_lowercase(),
                name: nonempty("AI_PROVIDER_NAME", "byteplus"),
                has_api_key: !string("BYTEPLUS_API_KEY", "").trim().is_empty(),
            },
        }
    }

    /// `NODE_ENV=production`.
    pub fn is_production(&self) -> bool {
        self.node_env == "production"
    }
}

/// A base-10 integer (surrounding whitespace allowed); unset, empty,
/// malformed or out-of-range values give `default`.
pub fn parse_int<T: std::str::FromStr>(value: Option<&str>, default: T) -> T {
    value.and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// `true`, `1` or `yes` (any case) is true, any other set value is false;
/// unset or empty gives `default`.
pub fn parse_bool(value: Option<&str>, default: bool) -> bool {
    match value.map(str::trim) {
        None | Some("") => default,
        Some(v) => ["true", "1", "yes"]
            .iter()
            .any(|t| v.eq_ignore_ascii_case(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let s = settings(&[]);
        assert_eq!(s.node_env, "development");
        assert_eq!(s.host, "localhost");
        assert_eq!(s.port, 8001);
        assert_eq!(s.service_version, "1.0.0");
        assert_eq!(s.worker_id, 0);
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
        assert_eq!(s.keywords_config, PathBuf::from("config/keywords.json"));
        assert_eq!(
            s.reasoning,
            ReasoningSettings {
                chain_of_thought: true,
                self_consistency: true,
                samples: 3,
                show_reasoning_process: false
            }
        );
        assert_eq!(s.provider.mode, "auto");
        assert_eq!(s.provider.name, "byteplus");
        assert!(!s.provider.has_api_key);
        assert!(s.provider.simulated());
    }

    #[test]
    fn integers_are_base_10_and_invalid_means_default() {
        assert_eq!(parse_int(Some("8080"), 8001u16), 8080);
        assert_eq!(parse_int(Some(" 42 "), 0u32), 42);
        assert_eq!(parse_int(Some("0x10"), 7u32), 7);
        assert_eq!(parse_int(Some("1e3"), 7u32), 7);
        assert_eq!(parse_int(Some("12abc"), 7u32), 7);
        assert_eq!(parse_int(Some(""), 7u32), 7);
        assert_eq!(parse_int(Some("-1"), 7u32), 7, "negative for unsigned");
        assert_eq!(parse_int(Some("70000"), 8001u16), 8001, "out of range");
        assert_eq!(parse_int(None, 5u64), 5);
        let s = settings(&[("PORT", "nope"), ("SHUTDOWN_GRACE_SECS", "5")]);
        assert_eq!(s.port, 8001);
        assert_eq!(s.shutdown_grace, Duration::from_secs(5));
    }

    #[test]
    fn booleans() {
        for t in ["true", "TRUE", "True", "1", "yes", "YES", " yes "] {
            assert!(parse_bool(Some(t), false), "{t}");
        }
        for f in ["false", "0", "no", "on", "y", "2"] {
            assert!(!parse_bool(Some(f), true), "{f}");
        }
        assert!(parse_bool(None, true));
        assert!(!parse_bool(Some(""), false));
        let s = settings(&[
            ("ENABLE_CHAIN_OF_THOUGHT", "no"),
            ("SHOW_REASONING_PROCESS", "Yes"),
        ]);
        assert!(!s.reasoning.chain_of_thought);
        assert!(s.reasoning.show_reasoning_process);
    }

    #[test]
    fn provider_mode() {
        let live = settings(&[("BYTEPLUS_API_KEY", "k")]);
        assert!(!live.provider.simulated());
        let forced = settings(&[("BYTEPLUS_API_KEY", "k"), ("AI_PROVIDER_MODE", "Simulated")]);
        assert!(forced.provider.simulated());
        let blank = settings(&[("BYTEPLUS_API_KEY", "  ")]);
        assert!(blank.provider.simulated());
    }

    #[test]
    fn worker_id_and_env() {
        let s = settings(&[("HEARTALK_WORKER_ID", "3"), ("NODE_ENV", "production")]);
        assert_eq!(s.worker_id, 3);
        assert!(s.is_production());
    }
}
