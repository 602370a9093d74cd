//! Human-readable sizes and durations as they appear in `ecosystem.toml`.
//!
//! Both are pure parsers so the rules are unit-tested in one place: sizes use
//! PM2's binary units (`"150M"` = 150 MiB), durations use humantime's syntax
//! (`"500ms"`, `"1m 30s"`), and a bare TOML integer means bytes or
//! milliseconds respectively, which is what PM2's ecosystem files contain.

use std::time::Duration;

/// Parses `"512"`, `"64K"`, `"1.5G"`, `"10MiB"`, `"2 GB"` into bytes.
///
/// Every unit is binary (K = 1024), as in PM2's `max_memory_restart`, because
/// operators copy those values across; a fraction is allowed before the unit.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(format!("`{text}` does not start with a number"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{number}` is not a number"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => return Err(format!("unknown size unit `{other}`")),
    };
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{text}` is too large"));
    }
    Ok(bytes.round() as u64)
}

/// Parses `"500ms"`, `"2s"`, `"1m 30s"` (humantime) into a [`Duration`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64K").unwrap(), 64 * 1024);
        assert_eq!(parse_size("150M").unwrap(), 150 * 1024 * 1024);
        assert_eq!(parse_size("150MB").unwrap(), 150 * 1024 * 1024);
        assert_eq!(parse_size("1.5G").unwrap(), 3 * 512 * 1024 * 1024);
        assert_eq!(parse_size("2 GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1t").unwrap(), 1 << 40);
    }

    #[test]
    fn bad_sizes_are_explained() {
        assert!(parse_size("").unwrap_err().contains("number"));
        assert!(parse_size("M").unwrap_err().contains("number"));
        assert!(parse_size("12X").unwrap_err().contains("unit `X`"));
        assert!(parse_size("1.2.3M").unwrap_err().contains("not a number"));
        assert!(
            parse_size("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn durations_use_humantime() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("10").is_err());
    }
}
