//! The check of an app's secrets before any of its workers start: the
//! same rules the worker applies at its own start
//! ([`shared::secrets::resolve`]: `NAME`/`NAME_FILE`, the files' modes,
//! the production requirements; [`shared::token_policy::parse`]: the token
//! rules), run on the environment the worker will get (the supervisor's
//! own, overlaid with `[apps.env]`).
//!
//! It runs at start and in `heartalk check` (a failure is exit 64 with
//! every error), and before every reload, restart and scale-up (a failure
//! refuses it and the running workers keep serving). A worker that found
//! the same errors would exit 64 and be restarted in a loop; checking here
//! first turns that loop into one clear message. The worker's `.env`
//! files are not read here: a secret set only there is checked by the
//! worker alone.

use shared::config::App;

/// The environment `app`'s workers get, as a lookup: `[apps.env]` over the
/// supervisor's own (the contract variables the supervisor adds are not
/// secrets and play no part).
pub fn worker_lookup(app: &App) -> impl Fn(&str) -> Option<String> + '_ {
    |k| app.env.get(k).cloned().or_else(|| std::env::var(k).ok())
}

/// Every reason `app`'s workers would refuse their secrets, one line each
/// starting with the app's name; empty when they would start.
pub fn check_app(app: &App) -> Vec<String> {
    check_with(&app.name, &app.cwd, worker_lookup(app))
}

/// [`check_app`] over any lookup (tests give a map); a relative
/// `NAME_FILE` is taken from `cwd`, where the app's workers run.
pub fn check_with(
    app: &str,
    cwd: &std::path::Path,
    get: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut errors: Vec<String> = match shared::secrets::resolve_in(Some(cwd), &get) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    };
    if let Err(rules) = shared::token_policy::parse(&get) {
        errors.extend(rules);
    }
    errors
        .into_iter()
        .map(|e| format!("app `{app}`: {e}"))
        .collect()
}

/// [`check_app`] for every app of `apps` (all of them, or the one named).
pub fn check_apps<'a>(apps: impl IntoIterator<Item = &'a App>) -> Vec<String> {
    apps.into_iter().flat_map(check_app).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_error_names_the_app() {
        let env = map(&[
            ("NODE_ENV", "production"),
            ("JWT_SECRET", "a"),
            ("JWT_SECRET_FILE", "/nonexistent"),
        ]);
        let errors = check_with("ai", std::path::Path::new("/"), |k| env.get(k).cloned());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("app `ai`: JWT_SECRET and JWT_SECRET_FILE"));
        assert!(errors[1].contains("HEARTALK_API_KEY (or HEARTALK_API_KEY_FILE) is required"));
    }

    #[test]
    fn bad_token_rules_are_refused_too() {
        let env = map(&[("JWT_MAX_AGE", "soon"), ("JWT_REQUIRE_EXP", "maybe")]);
        let errors = check_with("ai", std::path::Path::new("/"), |k| env.get(k).cloned());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors.iter().all(|e| e.starts_with("app `ai`: JWT_")),
            "{errors:?}"
        );
    }

    #[test]
    fn a_clean_environment_passes() {
        let env = map(&[("JWT_SECRET", "a")]);
        assert!(check_with("ai", std::path::Path::new("/"), |k| env.get(k).cloned()).is_empty());
    }
}
