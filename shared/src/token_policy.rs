//! The rules a user or service JWT must meet beyond its signature, read
//! from the environment: whether it must carry `exp` (`JWT_REQUIRE_EXP`),
//! how old it may be (`JWT_MAX_AGE`), and how far the issuer's clock may
//! differ from ours (`JWT_CLOCK_TOLERANCE`). This module owns their
//! parsing, for the worker (which applies the policy) and for the
//! supervisor's pre-start check (which refuses the same values before any
//! worker runs); applying the policy to a token is the worker's job.
//!
//! Unlike the worker's other settings, which fall back to a default on a
//! bad value so that a typo never stops the service, these are security
//! switches: a value that cannot be read is an error, never a silent
//! default, because the default may be the weaker rule (`JWT_REQUIRE_EXP=ture`
//! must not mean "tokens without expiry are fine"). The values are not
//! secrets, so the errors quote them.

use std::time::Duration;

use crate::config::units::parse_duration;

/// `JWT_REQUIRE_EXP`: whether a token without `exp` is refused.
pub const JWT_REQUIRE_EXP: &str = "JWT_REQUIRE_EXP";
/// `JWT_MAX_AGE`: the longest a token may live (from its `iat`).
pub const JWT_MAX_AGE: &str = "JWT_MAX_AGE";
/// `JWT_CLOCK_TOLERANCE`: the leeway of every time check.
pub const JWT_CLOCK_TOLERANCE: &str = "JWT_CLOCK_TOLERANCE";

/// The token rules in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPolicy {
    /// A token without `exp` is refused (`TOKEN_EXP_REQUIRED`). Default:
    /// on in production only, because the Node.js service accepted tokens
    /// that never expire and other environments keep that compatibility.
    pub require_exp: bool,
    /// The longest a token may live: `iat` at most this long ago, `exp` at
    /// most this long after `iat` (or, without `iat`, after now). `None`
    /// (the default) sets no bound beyond the token's own `exp`.
    pub max_age: Option<Duration>,
    /// Leeway applied to `nbf`, `exp` and the max-age checks, for issuers
    /// whose clock is a little off. Default [`DEFAULT_CLOCK_TOLERANCE`],
    /// at most [`MAX_CLOCK_TOLERANCE`].
    pub clock_tolerance: Duration,
}

/// How long a service JWT lives: the worker signs its outbound ones for
/// this long (API.md §3). The backend's inbound ones are assumed to live as
/// long (API.md states only the outbound lifetime): with a `JWT_MAX_AGE`
/// below it, such a token would be refused, hence the warning at start.
pub const SERVICE_TOKEN_TTL: Duration = Duration::from_secs(300);

/// `JWT_CLOCK_TOLERANCE` when unset: enough for hosts synchronised by NTP,
/// too little to matter for a token's lifetime.
pub const DEFAULT_CLOCK_TOLERANCE: Duration = Duration::from_secs(5);

/// The largest `JWT_CLOCK_TOLERANCE` accepted: a leeway extends every
/// token's life by as much, so a large one is refused rather than applied.
pub const MAX_CLOCK_TOLERANCE: Duration = Duration::from_secs(5 * 60);

impl TokenPolicy {
    /// The policy with every variable unset, in production (`NODE_ENV`
    /// trimmed is `production`) or elsewhere.
    pub const fn defaults(production: bool) -> TokenPolicy {
        TokenPolicy {
            require_exp: production,
            max_age: None,
            clock_tolerance: DEFAULT_CLOCK_TOLERANCE,
        }
    }
}

impl Default for TokenPolicy {
    /// The development defaults: `exp` optional, no maximum age, 5 s of
    /// leeway (what [`parse`] gives with nothing set).
    fn default() -> Self {
        TokenPolicy::defaults(false)
    }
}

/// Reads the policy through `get` (an environment lookup): `NODE_ENV`,
/// `JWT_REQUIRE_EXP`, `JWT_MAX_AGE`, `JWT_CLOCK_TOLERANCE`.
///
/// - `JWT_REQUIRE_EXP`: `true/false`, `1/0`, `yes/no` in any case; unset or
///   blank means the default (true in production, false otherwise).
/// - `JWT_MAX_AGE`: unset or blank means no limit; an integer is seconds,
///   anything else a humantime duration (`24h`, `7d`, `90m`); zero is an
///   error (unset it for no limit).
/// - `JWT_CLOCK_TOLERANCE`: unset or blank means 5 s; an integer is
///   seconds, anything else humantime; 0 is allowed (the Node.js service's
///   exact behaviour), more than 5 minutes is an error.
///
/// Every value that cannot be used gives one line naming the variable, the
/// value and what is accepted; all of them are returned, not just the
/// first, so one start reports everything to fix.
pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<TokenPolicy, Vec<String>> {
    let mut policy = TokenPolicy::defaults(crate::is_production(get("NODE_ENV").as_deref()));
    let mut errors = Vec::new();
    let mut read = |key: &str, apply: &mut dyn FnMut(&str) -> Result<(), String>| {
        let Some(raw) = get(key) else { return };
        let value = raw.trim();
        if value.is_empty() {
            return;
        }
        if let Err(why) = apply(value) {
            errors.push(format!("{key}={raw:?}: {why}"));
        }
    };
    read(JWT_REQUIRE_EXP, &mut |v| {
        policy.require_exp = parse_bool(v)?;
        Ok(())
    });
    read(JWT_MAX_AGE, &mut |v| {
        let d = parse_seconds_or_duration(v)?;
        if d.is_zero() {
            return Err("must be more than zero (unset it for no limit)".into());
        }
        policy.max_age = Some(d);
        Ok(())
    });
    read(JWT_CLOCK_TOLERANCE, &mut |v| {
        let d = parse_seconds_or_duration(v)?;
        if d > MAX_CLOCK_TOLERANCE {
            return Err("must be at most 5 minutes (a leeway extends every token's life)".into());
        }
        policy.clock_tolerance = d;
        Ok(())
    });
    if errors.is_empty() {
        Ok(policy)
    } else {
        Err(errors)
    }
}

/// A strict boolean: `true/false`, `1/0`, `yes/no`, any case (trimmed by
/// the caller). The worker's lenient booleans are this, with anything else
/// false.
pub fn parse_bool(value: &str) -> Result<bool, String> {
    const TRUE: [&str; 3] = ["true", "1", "yes"];
    const FALSE: [&str; 3] = ["false", "0", "no"];
    if TRUE.iter().any(|t| value.eq_ignore_ascii_case(t)) {
        Ok(true)
    } else if FALSE.iter().any(|f| value.eq_ignore_ascii_case(f)) {
        Ok(false)
    } else {
        Err("not a boolean (true/false, 1/0 or yes/no)".into())
    }
}

/// An integer number of seconds, or a humantime duration (`24h`, `7d`,
/// `90m`, `1h 30m`).
fn parse_seconds_or_duration(value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => parse_duration(value)
            .map_err(|_| "not a duration (seconds, or e.g. 24h, 7d)".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn policy(pairs: &[(&str, &str)]) -> Result<TokenPolicy, Vec<String>> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        parse(|k| map.get(k).map(|v| v.to_string()))
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn defaults_depend_on_node_env() {
        let dev = TokenPolicy {
            require_exp: false,
            max_age: None,
            clock_tolerance: secs(5),
        };
        assert_eq!(policy(&[]), Ok(dev));
        assert_eq!(TokenPolicy::default(), dev);
        assert_eq!(policy(&[("NODE_ENV", "development")]), Ok(dev));
        assert_eq!(policy(&[("NODE_ENV", "test")]), Ok(dev));
        let prod = TokenPolicy {
            require_exp: true,
            ..dev
        };
        assert_eq!(policy(&[("NODE_ENV", "production")]), Ok(prod));
        assert_eq!(
            policy(&[("NODE_ENV", " production\n")]),
            Ok(prod),
            "trimmed"
        );
        assert_eq!(TokenPolicy::defaults(true), prod);
        // The same comparison as the worker's `is_production`: exact case.
        assert_eq!(policy(&[("NODE_ENV", "Production")]), Ok(dev));
    }

    #[test]
    fn blank_values_mean_the_default() {
        let blank = [
            ("NODE_ENV", "production"),
            (JWT_REQUIRE_EXP, "  "),
            (JWT_MAX_AGE, ""),
            (JWT_CLOCK_TOLERANCE, "\t"),
        ];
        assert_eq!(policy(&blank), Ok(TokenPolicy::defaults(true)));
    }

    #[test]
    fn require_exp_is_a_strict_boolean() {
        for (v, want) in [
            ("true", true),
            ("TRUE", true),
            (" Yes ", true),
            ("1", true),
            ("false", false),
            ("False", false),
            ("NO", false),
            ("0", false),
        ] {
            for env in ["production", "development"] {
                let p = policy(&[("NODE_ENV", env), (JWT_REQUIRE_EXP, v)]).unwrap();
                assert_eq!(p.require_exp, want, "{v:?} in {env}");
            }
        }
        for v in ["ture", "on", "off", "y", "2", "enabled"] {
            assert_eq!(
                policy(&[(JWT_REQUIRE_EXP, v)]),
                Err(vec![format!(
                    "JWT_REQUIRE_EXP={v:?}: not a boolean (true/false, 1/0 or yes/no)"
                )]),
            );
        }
    }

    #[test]
    fn max_age_is_seconds_or_humantime() {
        let age = |v: &str| policy(&[(JWT_MAX_AGE, v)]).map(|p| p.max_age);
        assert_eq!(age("3600"), Ok(Some(secs(3600))));
        assert_eq!(age(" 86400 "), Ok(Some(secs(86_400))));
        assert_eq!(age("24h"), Ok(Some(secs(86_400))));
        assert_eq!(age("7d"), Ok(Some(secs(7 * 86_400))));
        assert_eq!(age("90m"), Ok(Some(secs(5400))));
        assert_eq!(age("1h 30m"), Ok(Some(secs(5400))));
        assert_eq!(age("1"), Ok(Some(secs(1))));
        assert_eq!(
            age("1.5h"),
            Ok(Some(secs(5400))),
            "humantime takes fractions"
        );
    }

    #[test]
    fn bad_max_age_is_an_error() {
        let not = |v: &str| format!("JWT_MAX_AGE={v:?}: not a duration (seconds, or e.g. 24h, 7d)");
        for v in ["abc", "-5", "24 hours please", "0x10", "1e3", "h"] {
            assert_eq!(policy(&[(JWT_MAX_AGE, v)]), Err(vec![not(v)]), "{v}");
        }
        for v in ["0", "0s", "0ms"] {
            assert_eq!(
                policy(&[(JWT_MAX_AGE, v)]),
                Err(vec![format!(
                    "JWT_MAX_AGE={v:?}: must be more than zero (unset it for no limit)"
                )])
            );
        }
    }

    #[test]
    fn clock_tolerance_bounds() {
        let tol = |v: &str| policy(&[(JWT_CLOCK_TOLERANCE, v)]).map(|p| p.clock_tolerance);
        assert_eq!(tol("0"), Ok(Duration::ZERO), "Node's exact behaviour");
        assert_eq!(tol("0s"), Ok(Duration::ZERO));
        assert_eq!(tol("30"), Ok(secs(30)));
        assert_eq!(tol("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(tol("300"), Ok(MAX_CLOCK_TOLERANCE), "5 minutes is allowed");
        assert_eq!(tol("5m"), Ok(MAX_CLOCK_TOLERANCE));
        let too_much = |v: &str| {
            format!(
                "JWT_CLOCK_TOLERANCE={v:?}: must be at most 5 minutes \
                 (a leeway extends every token's life)"
            )
        };
        for v in ["301", "5m 1s", "1h"] {
            assert_eq!(policy(&[(JWT_CLOCK_TOLERANCE, v)]), Err(vec![too_much(v)]));
        }
        assert_eq!(
            policy(&[(JWT_CLOCK_TOLERANCE, "soon")]),
            Err(vec![
                "JWT_CLOCK_TOLERANCE=\"soon\": not a duration (seconds, or e.g. 24h, 7d)".into()
            ])
        );
    }

    #[test]
    fn every_error_is_reported() {
        let errors = policy(&[
            (JWT_REQUIRE_EXP, "maybe"),
            (JWT_MAX_AGE, "abc"),
            (JWT_CLOCK_TOLERANCE, "10m"),
        ])
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "JWT_REQUIRE_EXP=\"maybe\": not a boolean (true/false, 1/0 or yes/no)",
                "JWT_MAX_AGE=\"abc\": not a duration (seconds, or e.g. 24h, 7d)",
                "JWT_CLOCK_TOLERANCE=\"10m\": must be at most 5 minutes \
                 (a leeway extends every token's life)",
            ]
        );
        // The value is quoted as it was set, untrimmed.
        assert_eq!(
            policy(&[(JWT_MAX_AGE, " x ")]).unwrap_err(),
            ["JWT_MAX_AGE=\" x \": not a duration (seconds, or e.g. 24h, 7d)"]
        );
    }

    #[test]
    fn all_three_set() {
        assert_eq!(
            policy(&[
                (JWT_REQUIRE_EXP, "no"),
                (JWT_MAX_AGE, "7d"),
                (JWT_CLOCK_TOLERANCE, "0"),
                ("NODE_ENV", "production"),
            ]),
            Ok(TokenPolicy {
                require_exp: false,
                max_age: Some(secs(7 * 86_400)),
                clock_tolerance: Duration::ZERO,
            })
        );
    }
}
