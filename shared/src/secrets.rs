//! The worker's secrets and where they come from: an environment variable
//! `NAME`, or a file named by `NAME_FILE` (the Docker/Swarm/Kubernetes
//! convention: secrets arrive as files under `/run/secrets`, which keeps
//! them out of `docker inspect`, `/proc/PID/environ`, crash reports and
//! child processes).
//!
//! Both sides call [`resolve`] with the same lookup: the supervisor before
//! it starts new workers on purpose (at start, `heartalk check`, every
//! reload, restart and scale-up), so a bad secret is exit 64 or a refused
//! command with the path in the message rather than workers that exit at
//! start (a worker respawned after a crash is not checked first: it exits
//! 64 and is restarted with backoff until its slot is errored); and the
//! worker at its own start,
//! which then reads the files itself. The worker reading the file (rather
//! than the supervisor passing the value on) means the value is never in
//! any process's environment, the standalone worker behaves the same, and
//! every worker started for any reason reads the file as it is then.
//!
//! The rules: `NAME` and `NAME_FILE` both set (non-blank) is an error; the
//! file must be a regular file (symlinks are followed, as Kubernetes'
//! secret volumes need), readable, valid UTF-8, at most 64 KiB, not empty,
//! and not readable by every user (mode `o+r`): a world-readable secret is
//! readable by any local account, so it is refused rather than trusted.
//! Trailing line ends are dropped, so `echo secret > file` works. With
//! `NODE_ENV=production`, `JWT_SECRET` and `HEARTALK_API_KEY` (or their
//! files) are required, because the worker's development defaults are
//! public.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Every variable that holds a secret and may come from `NAME_FILE`.
pub const SECRET_VARS: &[&str] = &[
    "JWT_SECRET",
    "JWT_SECRET_PREVIOUS",
    "HEARTALK_API_KEY",
    "HEARTALK_API_KEY_PREVIOUS",
    "BYTEPLUS_API_KEY",
    "REDIS_PASSWORD",
    "REDIS_URL",
];

/// Required, from the environment or a file, when `NODE_ENV=production`.
pub const REQUIRED_IN_PRODUCTION: &[&str] = &["JWT_SECRET", "HEARTALK_API_KEY"];

/// A secret file larger than this is not a secret (a wrong path, say).
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Why the secrets cannot be used. Every message names the variable and,
/// for a file, its path; none quotes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "{name} and {name}_FILE are both set: set only one (the file keeps the value out of the environment)"
    )]
    BothSet { name: &'static str },
    #[error("{name}_FILE={}: cannot read it: {reason}", path.display())]
    Unreadable {
        name: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{name}_FILE={}: not a regular file", path.display())]
    NotAFile { name: &'static str, path: PathBuf },
    #[error(
        "{name}_FILE={}: readable by every user (mode {mode:04o}); make it 0400 or 0440 (chmod o-r)",
        path.display()
    )]
    WorldReadable {
        name: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{name}_FILE={}: the file is empty", path.display())]
    Empty { name: &'static str, path: PathBuf },
    #[error("{name}_FILE={}: larger than {MAX_FILE_BYTES} bytes, not a secret", path.display())]
    TooLarge { name: &'static str, path: PathBuf },
    #[error("{name}_FILE={}: not UTF-8 text", path.display())]
    NotText { name: &'static str, path: PathBuf },
    #[error("REDIS_PASSWORD is set but REDIS_URL already carries a password: keep it in one place")]
    RedisPasswordTwice,
    #[error(
        "{name} (or {name}_FILE) is required with NODE_ENV=production: the built-in development value is public"
    )]
    Required { name: &'static str },
}

/// The secrets read from files, by variable name; a variable set directly
/// is not copied here (the caller's lookup still has it).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FileSecrets {
    values: BTreeMap<&'static str, String>,
}

impl std::fmt::Debug for FileSecrets {
    /// Names only: the values must not reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

impl FileSecrets {
    /// The value read from `NAME_FILE`, if that is where `name` came from.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The variables that came from files.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.values.keys().copied()
    }
}

/// A set, non-blank value.
fn set(get: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(name).filter(|v| !v.trim().is_empty())
}

/// Reads every `NAME_FILE` that `get` sets and checks the rules of the
/// module doc, returning every error found (not only the first). A
/// relative path is relative to the working directory; see [`resolve_in`].
pub fn resolve(get: impl Fn(&str) -> Option<String>) -> Result<FileSecrets, Vec<SecretError>> {
    resolve_in(None, get)
}

/// [`resolve`] with relative `NAME_FILE` paths taken relative to `base`
/// (the supervisor checks with the app's `cwd`, where the worker runs).
pub fn resolve_in(
    base: Option<&Path>,
    get: impl Fn(&str) -> Option<String>,
) -> Result<FileSecrets, Vec<SecretError>> {
    let mut errors = Vec::new();
    let mut files = FileSecrets::default();
    for &name in SECRET_VARS {
        let direct = set(&get, name);
        let Some(path) = set(&get, &format!("{name}_FILE")) else {
            continue;
        };
        if direct.is_some() {
            errors.push(SecretError::BothSet { name });
            continue;
        }
        let path = Path::new(path.trim());
        let path = match base {
            Some(base) if path.is_relative() => base.join(path),
            _ => path.to_path_buf(),
        };
        match read_secret_file(name, &path) {
            Ok(value) => {
                files.values.insert(name, value);
            }
            Err(e) => errors.push(e),
        }
    }
    let value = |name: &str| {
        files
            .get(name)
            .map(str::to_string)
            .or_else(|| set(&get, name))
    };
    if value("REDIS_PASSWORD").is_some() && value("REDIS_URL").is_some_and(|u| url_has_password(&u))
    {
        errors.push(SecretError::RedisPasswordTwice);
    }
    if crate::is_production(get("NODE_ENV").as_deref()) {
        for &name in REQUIRED_IN_PRODUCTION {
            let failed_file = errors.iter().any(|e| e.variable() == Some(name));
            if value(name).is_none() && !failed_file {
                errors.push(SecretError::Required { name });
            }
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(errors)
    }
}

impl SecretError {
    /// The secret variable the error is about, if one.
    pub fn variable(&self) -> Option<&'static str> {
        match self {
            SecretError::BothSet { name }
            | SecretError::Unreadable { name, .. }
            | SecretError::NotAFile { name, .. }
            | SecretError::WorldReadable { name, .. }
            | SecretError::Empty { name, .. }
            | SecretError::TooLarge { name, .. }
            | SecretError::NotText { name, .. }
            | SecretError::Required { name } => Some(name),
            SecretError::RedisPasswordTwice => Some("REDIS_PASSWORD"),
        }
    }
}

/// Reads one secret file under the module's rules. The checks use the
/// opened file's own metadata, so the file checked is the file read.
pub fn read_secret_file(name: &'static str, path: &Path) -> Result<String, SecretError> {
    let unreadable = |e: std::io::Error| SecretError::Unreadable {
        name,
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    // Non-blocking: opening a FIFO would otherwise wait for a writer (and
    // the supervisor checks from its event loop). No effect on a regular
    // file, the only kind read.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    let path_buf = || path.to_path_buf();
    if !meta.is_file() {
        return Err(SecretError::NotAFile {
            name,
            path: path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(SecretError::WorldReadable {
            name,
            path: path_buf(),
            mode,
        });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(SecretError::TooLarge {
            name,
            path: path_buf(),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(SecretError::TooLarge {
            name,
            path: path_buf(),
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| SecretError::NotText {
        name,
        path: path_buf(),
    })?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.trim().is_empty() {
        return Err(SecretError::Empty {
            name,
            path: path_buf(),
        });
    }
    Ok(value.to_string())
}

/// Whether a URL carries a password: in its userinfo
/// (`scheme://user:pw@host`, `scheme://:pw@host`) or as a `pass=` or
/// `password=` query parameter (redis-rs reads one from a
/// `redis+unix://` URL).
pub fn url_has_password(url: &str) -> bool {
    let in_userinfo =
        userinfo(url).is_some_and(|u| u.split_once(':').is_some_and(|(_, pw)| !pw.is_empty()));
    let in_query = url.split_once('?').is_some_and(|(_, query)| {
        query
            .split(['&', '#'])
            .filter_map(|pair| pair.split_once('='))
            .any(|(k, v)| PASSWORD_PARAMS.contains(&k) && !v.is_empty())
    });
    in_userinfo || in_query
}

/// Query parameters that hold a password.
const PASSWORD_PARAMS: &[&str] = &["pass", "password"];

/// The userinfo of `scheme://userinfo@host/...`, if any: up to the last
/// `@` before the query, so a password with an unencoded `/` counts here
/// as it is masked by [`redact_urls`] (which, on running text, also takes
/// an `@` in the query for the userinfo's end: masking too much is its
/// safe failure, refusing a good URL would not be this one's).
fn userinfo(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let before_query = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    Some(&before_query[..before_query.rfind('@')?])
}

/// Where a URL ends in running text: whitespace, or a quote or backslash
/// (a JSON string's end or escape). Nothing else: a password may hold any
/// other character, and masking too much is the safe failure.
fn url_end(c: char) -> bool {
    c.is_whitespace() || c == '"' || c == '\\'
}

/// `text` with every URL's userinfo replaced by `***` (`redis://:pw@h` →
/// `redis://***@h`) and the value of every `pass=`/`password=` query
/// parameter too: for anything that may quote a URL in a log line or an
/// error. A user name alone is masked too, since it is often a token.
pub fn redact_urls(text: &str) -> std::borrow::Cow<'_, str> {
    let may_hold = text.contains("://") && (text.contains('@') || text.contains("pass"));
    if !may_hold {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(url_end).unwrap_or(tail.len());
        let url = &tail[..end];
        // The authority ends at the first `/`, `?` or `#` after its last
        // `@` (a password may hold `/` too, so the last `@` decides).
        let host_from = url.rfind('@').map_or(0, |at| at + 1);
        let path_at = url[host_from..]
            .find(['/', '?', '#'])
            .map_or(url.len(), |p| host_from + p);
        let (authority, path) = url.split_at(path_at);
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        out.push_str(&mask_password_params(path));
        rest = &tail[end..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// A URL's path and query with the values of `pass=`/`password=` masked.
fn mask_password_params(path: &str) -> String {
    let Some((before, query)) = path.split_once('?') else {
        return path.to_string();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if PASSWORD_PARAMS.contains(&k) && !v.is_empty() => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect();
    let mut out = format!("{before}?{}", pairs.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn secret_file(dir: &tempfile::TempDir, name: &str, body: &str, mode: u32) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    }

    #[test]
    fn a_file_with_a_trailing_newline_gives_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let jwt = secret_file(&dir, "jwt", "s3cret-value\n", 0o400);
        let key = secret_file(&dir, "key", "k3y\r\n\n", 0o440);
        let got = resolve(lookup(&[
            ("JWT_SECRET_FILE", &jwt),
            ("HEARTALK_API_KEY_FILE", &key),
        ]))
        .unwrap();
        assert_eq!(got.get("JWT_SECRET"), Some("s3cret-value"));
        assert_eq!(got.get("HEARTALK_API_KEY"), Some("k3y"));
        assert_eq!(
            got.names().collect::<Vec<_>>(),
            ["HEARTALK_API_KEY", "JWT_SECRET"]
        );
        assert!(!format!("{got:?}").contains("s3cret"), "{got:?}");
    }

    #[test]
    fn inner_lines_are_kept_for_lists() {
        let dir = tempfile::tempdir().unwrap();
        let jwt = secret_file(&dir, "jwt", "new\nold\n", 0o600);
        let got = resolve(lookup(&[("JWT_SECRET_FILE", &jwt)])).unwrap();
        assert_eq!(got.get("JWT_SECRET"), Some("new\nold"));
    }

    #[test]
    fn both_set_is_an_error_but_a_blank_variable_is_unset() {
        let dir = tempfile::tempdir().unwrap();
        let jwt = secret_file(&dir, "jwt", "x", 0o400);
        let errs = resolve(lookup(&[("JWT_SECRET", "y"), ("JWT_SECRET_FILE", &jwt)])).unwrap_err();
        assert_eq!(errs, [SecretError::BothSet { name: "JWT_SECRET" }]);
        assert!(
            errs[0]
                .to_string()
                .contains("JWT_SECRET and JWT_SECRET_FILE are both set")
        );
        let ok = resolve(lookup(&[("JWT_SECRET", " "), ("JWT_SECRET_FILE", &jwt)])).unwrap();
        assert_eq!(ok.get("JWT_SECRET"), Some("x"));
    }

    #[test]
    fn world_readable_missing_directory_and_empty_files_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let open = secret_file(&dir, "open", "x", 0o644);
        let empty = secret_file(&dir, "empty", "\n", 0o400);
        let missing = dir.path().join("missing").display().to_string();
        let folder = dir.path().display().to_string();
        let errs = resolve(lookup(&[
            ("JWT_SECRET_FILE", &open),
            ("HEARTALK_API_KEY_FILE", &empty),
            ("BYTEPLUS_API_KEY_FILE", &missing),
            ("REDIS_URL_FILE", &folder),
        ]))
        .unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            matches!(errs[0], SecretError::WorldReadable { mode: 0o644, .. }),
            "{errs:?}"
        );
        assert!(
            text[0].contains(&open) && text[0].contains("0644"),
            "{}",
            text[0]
        );
        assert!(
            text[1].contains(&empty) && text[1].contains("empty"),
            "{}",
            text[1]
        );
        assert!(
            text[2].contains(&missing) && text[2].contains("cannot read"),
            "{}",
            text[2]
        );
        assert!(text[3].contains(&folder), "{}", text[3]);
    }

    #[test]
    fn a_symlink_is_judged_by_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = secret_file(&dir, "target", "v", 0o440);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let got = resolve(lookup(&[("JWT_SECRET_FILE", link.to_str().unwrap())])).unwrap();
        assert_eq!(got.get("JWT_SECRET"), Some("v"));
    }

    #[test]
    fn large_and_binary_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = secret_file(&dir, "big", &"x".repeat(70_000), 0o400);
        let path = dir.path().join("bin");
        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        let errs = resolve(lookup(&[
            ("JWT_SECRET_FILE", &big),
            ("REDIS_PASSWORD_FILE", path.to_str().unwrap()),
        ]))
        .unwrap_err();
        assert!(matches!(errs[0], SecretError::TooLarge { .. }), "{errs:?}");
        assert!(matches!(errs[1], SecretError::NotText { .. }), "{errs:?}");
    }

    #[test]
    fn production_requires_the_two_secrets_from_either_source() {
        let errs = resolve(lookup(&[("NODE_ENV", "production")])).unwrap_err();
        assert_eq!(
            errs,
            [
                SecretError::Required { name: "JWT_SECRET" },
                SecretError::Required {
                    name: "HEARTALK_API_KEY"
                }
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let jwt = secret_file(&dir, "jwt", "x", 0o400);
        assert!(
            resolve(lookup(&[
                ("NODE_ENV", "production"),
                ("JWT_SECRET_FILE", &jwt),
                ("HEARTALK_API_KEY", "k"),
            ]))
            .is_ok()
        );
        assert!(resolve(lookup(&[("NODE_ENV", "development")])).is_ok());
        // A file that failed is reported once, not also as missing.
        let open = secret_file(&dir, "open", "x", 0o604);
        let errs = resolve(lookup(&[
            ("NODE_ENV", "production"),
            ("JWT_SECRET_FILE", &open),
            ("HEARTALK_API_KEY", "k"),
        ]))
        .unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
    }

    #[test]
    fn a_redis_password_in_two_places_is_refused() {
        let errs = resolve(lookup(&[
            ("REDIS_URL", "redis://:pw@redis:6379/0"),
            ("REDIS_PASSWORD", "pw2"),
        ]))
        .unwrap_err();
        assert_eq!(errs, [SecretError::RedisPasswordTwice]);
        assert!(
            resolve(lookup(&[
                ("REDIS_URL", "redis://app@redis:6379/0"),
                ("REDIS_PASSWORD", "pw2"),
            ]))
            .is_ok()
        );
    }

    #[test]
    fn url_passwords_are_found() {
        assert!(url_has_password("redis://:pw@h:6379/0"));
        assert!(url_has_password("rediss://user:pw@h"));
        assert!(!url_has_password("redis://user@h"));
        assert!(!url_has_password("redis://h:6379/0"));
        assert!(!url_has_password("redis://h/0?x=a@b"));
        // An unencoded `/` in the password: redact_urls masks it as one.
        assert!(url_has_password("redis://:p/w@h:6379"));
        assert_eq!(redact_urls("redis://:p/w@h:6379"), "redis://***@h:6379");
    }

    #[test]
    fn passwords_with_sub_delimiters_and_query_passwords_are_masked() {
        for (raw, masked) in [
            ("redis://:ab)cd@h:6379/0", "redis://***@h:6379/0"),
            ("http://u:p,w@h/x", "http://***@h/x"),
            ("redis://:it's@h", "redis://***@h"),
            ("redis://:p@ss/w@h:1/0 next", "redis://***@h:1/0 next"),
            ("url redis://:pw@h", "url redis://***@h"),
            (
                "redis+unix:///run/redis.sock?db=0&pass=S3cret",
                "redis+unix:///run/redis.sock?db=0&pass=***",
            ),
            (
                "\"rediss://h/0?password=x#f\"",
                "\"rediss://h/0?password=***#f\"",
            ),
            ("x http://h/?passive=1 y", "x http://h/?passive=1 y"),
        ] {
            assert_eq!(redact_urls(raw), masked, "{raw}");
        }
        assert!(url_has_password("redis+unix:///s.sock?pass=x"));
        assert!(!url_has_password("redis+unix:///s.sock?db=1"));
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .args(["-m", "0600"])
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let errs = resolve(lookup(&[("JWT_SECRET_FILE", fifo.to_str().unwrap())])).unwrap_err();
        assert!(matches!(errs[0], SecretError::NotAFile { .. }), "{errs:?}");
    }

    #[test]
    fn relative_paths_are_taken_from_the_base() {
        let dir = tempfile::tempdir().unwrap();
        secret_file(&dir, "jwt", "from-base\n", 0o400);
        let got = resolve_in(Some(dir.path()), lookup(&[("JWT_SECRET_FILE", "jwt")])).unwrap();
        assert_eq!(got.get("JWT_SECRET"), Some("from-base"));
    }

    #[test]
    fn redaction_masks_every_userinfo_and_nothing_else() {
        assert_eq!(
            redact_urls("error sending request for url (http://u:pw@backend:8000/x?a=1)"),
            "error sending request for url (http://***@backend:8000/x?a=1)"
        );
        assert_eq!(
            redact_urls("a redis://:pw@r:6379/0 and rediss://tok@r2 b"),
            "a redis://***@r:6379/0 and rediss://***@r2 b"
        );
        assert_eq!(
            redact_urls("mail a@b.c at http://h/x"),
            "mail a@b.c at http://h/x"
        );
        assert_eq!(redact_urls("\"http://u:p@h\""), "\"http://***@h\"");
        assert_eq!(redact_urls("plain"), "plain");
    }
}
