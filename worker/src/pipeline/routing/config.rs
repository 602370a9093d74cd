//! The router's configuration file (`config/keywords.json`, API.md §6):
//! its on-disk shape, an order-preserving parse of it, and the built-in
//! fallback table. Nothing here decides a route; [`super::Router`] turns a
//! [`RouterConfig`] into its keyword index.
//!
//! Order matters: routes are indexed in file order and ties in the sort keep
//! creation order, so the Node.js results depend on the order of the JSON
//! object keys. The workspace's `serde_json` is built without
//! `preserve_order`, so objects whose order matters are read through
//! [`OrderedMap`], a `Visitor` that keeps the entries as they come.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize as DeriveDeserialize;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

/// Default `settings.cache_size`: entries in the decision cache.
pub const DEFAULT_CACHE_SIZE: usize = 1000;
/// Default `settings.cache_ttl`, in milliseconds.
pub const DEFAULT_CACHE_TTL_MS: u64 = 300_000;

/// Why a configuration could not be used. The router then falls back to
/// [`RouterConfig::fallback`] (API.md §6: "missing or invalid").
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("reading the router config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the router config: {0}")]
    Parse(#[from] serde_json::Error),
}

/// A JSON object read as a list of entries in document order. A repeated
/// key keeps its first position and its last value, as `JSON.parse` does.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for OrderedVisitor<V> {
            type Value = OrderedMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(String, V)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, V>()? {
                    match entries.iter_mut().find(|(k, _)| *k == key) {
                        Some(slot) => slot.1 = value,
                        None => entries.push((key, value)),
                    }
                }
                Ok(OrderedMap(entries))
            }
        }

        deserializer.deserialize_map(OrderedVisitor(PhantomData))
    }
}

/// One route as written in the file. `weight` and `priority` stay optional
/// here because the Node.js defaults (`weight || 1.0`, `priority || 999`)
/// also replace a 0, which is applied when the index is built.
#[derive(Debug, Clone, PartialEq, DeriveDeserialize)]
pub struct RouteDef {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub weight: Option<f64>,
    #[serde(default)]
    pub priority: Option<f64>,
}

/// The whole file. `routes` is required (a file without it is "invalid");
/// `patterns` and `settings` may be absent. Settings are read leniently:
/// a field of the wrong type takes its default, since Node.js ignored most
/// of them anyway (the threshold is always 0.6).
#[derive(Debug, Clone, PartialEq, DeriveDeserialize)]
pub struct RouterConfig {
    pub routes: OrderedMap<RouteDef>,
    #[serde(default)]
    pub patterns: OrderedMap<Vec<String>>,
    #[serde(default)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

impl RouterConfig {
    /// Parses the file's text. Errors on anything that is not JSON or whose
    /// routes/patterns do not have the documented shape.
    pub fn from_json(text: &str) -> Result<RouterConfig, RouterError> {
        Ok(serde_json::from_str(text)?)
    }

    /// The built-in table used when the file is missing or invalid: a single
    /// `chat` route (聊天 问答 帮助, weight 0.8, priority 2), no patterns and
    /// default settings.
    pub fn fallback() -> RouterConfig {
        RouterConfig {
            routes: OrderedMap(vec![(
                "chat".to_string(),
                RouteDef {
                    name: Some("日常对话".to_string()),
                    keywords: ["聊天", "问答", "帮助"].map(String::from).to_vec(),
                    weight: Some(0.8),
                    priority: Some(2.0),
                },
            )]),
            patterns: OrderedMap::default(),
            settings: serde_json::Map::new(),
        }
    }

    /// `settings.case_sensitive`, default false.
    pub fn case_sensitive(&self) -> bool {
        self.settings
            .get("case_sensitive")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }

    /// `settings.cache_size` (a non-negative integer), default 1000.
    pub fn cache_size(&self) -> usize {
        self.settings
            .get("cache_size")
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(DEFAULT_CACHE_SIZE)
    }

    /// `settings.cache_ttl` in milliseconds (a non-negative integer),
    /// default 300000.
    pub fn cache_ttl_ms(&self) -> u64 {
        self.settings
            .get("cache_ttl")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(DEFAULT_CACHE_TTL_MS)
    }

    /// The words of pattern group `name`, if the file has it.
    pub fn pattern(&self, name: &str) -> Option<&[String]> {
        self.patterns
            .0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, words)| words.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_order_is_kept_and_duplicates_keep_first_position() {
        let m: OrderedMap<u32> = serde_json::from_str(r#"{"z":1,"a":2,"m":3,"a":4}"#).unwrap();
        assert_eq!(m.0, vec![("z".into(), 1), ("a".into(), 4), ("m".into(), 3)]);
    }

    #[test]
    fn shape_errors_are_errors() {
        assert!(RouterConfig::from_json("{").is_err());
        assert!(RouterConfig::from_json("[]").is_err());
        assert!(RouterConfig::from_json("{}").is_err());
        assert!(RouterConfig::from_json(r#"{"routes":[]}"#).is_err());
        assert!(RouterConfig::from_json(r#"{"routes":{"a":{"keywords":"x"}}}"#).is_err());
        assert!(RouterConfig::from_json(r#"{"routes":{"a":{"weight":"2"}}}"#).is_err());
    }

    #[test]
    fn settings_default_when_absent_or_mistyped() {
        let c = RouterConfig::from_json(r#"{"routes":{}}"#).unwrap();
        assert!(!c.case_sensitive());
        assert_eq!(c.cache_size(), DEFAULT_CACHE_SIZE);
        assert_eq!(c.cache_ttl_ms(), DEFAULT_CACHE_TTL_MS);
        let c = RouterConfig::from_json(
            r#"{"routes":{},"settings":{"case_sensitive":true,"cache_size":5,"cache_ttl":"x"}}"#,
        )
        .unwrap();
        assert!(c.case_sensitive());
        assert_eq!(c.cache_size(), 5);
        assert_eq!(c.cache_ttl_ms(), DEFAULT_CACHE_TTL_MS);
    }
}
