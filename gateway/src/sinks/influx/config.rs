//! `[influx]`: where readings go as InfluxDB line protocol, and how they are batched.
//!
//! The doc comments on [`InfluxConfig`]'s fields are the user documentation of the section.
//! [`InfluxConfig::problems`] reports every problem at once; `WriteTarget::new` turns a
//! config without problems into the URL and credentials the writer uses.

use std::fmt;

use reqwest::Url;
use reqwest::header::HeaderValue;

/// `[influx]`: an InfluxDB-compatible server that stores readings (VictoriaMetrics,
/// InfluxDB 1.x, InfluxDB 2.x). Absent: readings go only to MQTT.
///
/// ```toml
/// [influx]
/// url = "http://127.0.0.1:8428"
/// api = "v1"
/// db = "shouwang"
/// ```
#[derive(Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:8428` (VictoriaMetrics) or
    /// `http://127.0.0.1:8086` (InfluxDB). A path is kept (`http://host/influx` writes to
    /// `http://host/influx/write`). Credentials go in `username`/`password` or `token`,
    /// never in the URL.
    pub url: String,
    /// `"v1"`: `POST <url>/write?db=<db>&precision=ms` (InfluxDB 1.x, VictoriaMetrics).
    /// `"v2"`: `POST <url>/api/v2/write?org=<org>&bucket=<bucket>&precision=ms` with
    /// `Authorization: Token <token>` (InfluxDB 2.x, VictoriaMetrics).
    pub api: InfluxApi,
    /// v1: the database. Required with `api = "v1"`. VictoriaMetrics stores it as the `db`
    /// label of every series.
    pub db: Option<String>,
    /// v1: user name, sent with `password` as HTTP basic auth. Optional.
    pub username: Option<String>,
    /// v1: password for `username`. Never logged.
    pub password: Option<String>,
    /// v2: the organization. Required with `api = "v2"`.
    pub org: Option<String>,
    /// v2: the bucket. Required with `api = "v2"`.
    pub bucket: Option<String>,
    /// v2: the API token. InfluxDB 2.x needs one; VictoriaMetrics ignores it. Never logged.
    pub token: Option<String>,
    /// Most lines in one request, 1 to 100000. A request is sent as soon as this many lines
    /// wait. Default 5000.
    #[serde(default = "default_batch_max_lines")]
    pub batch_max_lines: usize,
    /// Longest a reading waits before it is sent, in milliseconds; 0 sends each batch as
    /// soon as the writer is free. Default 1000.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Most reading batches (one poll of one device each) held in memory: those not yet
    /// written to the queue on disk, and all of them while the disk cannot take them
    /// (then the oldest is dropped and counted in `batches_dropped`). Readings on disk
    /// are bounded by `queue_max_bytes` instead. Default 10000.
    #[serde(default = "default_queue_max_batches")]
    pub queue_max_batches: usize,
    /// Most bytes the readings queue on disk (`<data_dir>/readings`) may take while the
    /// server is away, 65536 (64 KiB) to 17179869184 (16 GiB). When full, the oldest
    /// readings are shed (a whole segment file, a sixteenth of this, at a time), counted
    /// in `batches_shed` and `lines_shed`, and the gateway raises its `readings_shed`
    /// fault. Default 67108864 (64 MiB, small next to any SD card): a one-point reading
    /// takes about 190 bytes on disk, so this holds about 340 000 readings, some two hours
    /// of the demo's 45 a second. Raise it to ride out longer outages.
    #[serde(default = "default_queue_max_bytes")]
    pub queue_max_bytes: u64,
    /// Readings older than this, in seconds, by their own timestamp on the gateway's
    /// clock, are shed like those over `queue_max_bytes`. At least 60. Default 604800
    /// (7 days).
    #[serde(default = "default_queue_max_age_s")]
    pub queue_max_age_s: u64,
    /// Longest a reading written to the disk queue waits for its fsync, in milliseconds,
    /// 1 to 60000: readings taken since the last sync are what a power cut can lose. One
    /// fsync covers everything written since the one before, so an SD card sees at most
    /// one (plus one for the delivered mark) per interval, however many readings arrive.
    /// Default 1000.
    #[serde(default = "default_sync_interval_ms")]
    pub sync_interval_ms: u64,
    /// Longest one write request may take, connecting included, in milliseconds.
    /// Default 5000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// Which write API the server speaks.
#[derive(Debug, Clone, Copy, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    V1,
    V2,
}

/// Lines of about 250 bytes: 25 MB, InfluxDB 1.x's default `max-body-size`, before gzip.
const MAX_BATCH_LINES: usize = 100_000;

fn default_batch_max_lines() -> usize {
    5000
}
fn default_flush_interval_ms() -> u64 {
    1000
}
fn default_queue_max_batches() -> usize {
    10_000
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_queue_max_bytes() -> u64 {
    64 << 20
}
fn default_queue_max_age_s() -> u64 {
    7 * 24 * 3600
}
fn default_sync_interval_ms() -> u64 {
    1000
}

/// Smallest `queue_max_bytes`: sixteen segments of 4 KiB.
pub const MIN_QUEUE_BYTES: u64 = 64 << 10;
/// Largest `queue_max_bytes`: 16 GiB, far beyond what a gateway's card should hold.
const MAX_QUEUE_BYTES: u64 = 16 << 30;

impl InfluxConfig {
    /// A config with the given server and API and every other field at its default.
    pub fn new(url: impl Into<String>, api: InfluxApi) -> Self {
        InfluxConfig {
            url: url.into(),
            api,
            db: None,
            username: None,
            password: None,
            org: None,
            bucket: None,
            token: None,
            batch_max_lines: default_batch_max_lines(),
            flush_interval_ms: default_flush_interval_ms(),
            queue_max_batches: default_queue_max_batches(),
            queue_max_bytes: default_queue_max_bytes(),
            queue_max_age_s: default_queue_max_age_s(),
            sync_interval_ms: default_sync_interval_ms(),
            timeout_ms: default_timeout_ms(),
        }
    }

    /// Every problem, as (field name relative to `[influx]`, message). Empty when valid.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = Vec::new();
        let mut add = |field: &str, message: String| p.push((field.to_string(), message));

        match Url::parse(&self.url) {
            Err(e) => add("url", format!("not an http(s) URL: {e}")),
            Ok(u) if !matches!(u.scheme(), "http" | "https") => add(
                "url",
                format!("not an http(s) URL: scheme is {:?}", u.scheme()),
            ),
            Ok(u) => {
                if !u.username().is_empty() || u.password().is_some() {
                    add(
                        "url",
                        "must not carry credentials; use username/password or token".into(),
                    );
                }
                if u.query().is_some() || u.fragment().is_some() {
                    add(
                        "url",
                        "must be a base URL without ?query or #fragment; the write path and \
                         parameters are added from api, db, org and bucket"
                            .into(),
                    );
                }
            }
        }

        let (mine, theirs, api) = match self.api {
            InfluxApi::V1 => (
                vec![("db", &self.db)],
                vec![
                    ("org", &self.org),
                    ("bucket", &self.bucket),
                    ("token", &self.token),
                ],
                "v1",
            ),
            InfluxApi::V2 => (
                vec![("org", &self.org), ("bucket", &self.bucket)],
                vec![
                    ("db", &self.db),
                    ("username", &self.username),
                    ("password", &self.password),
                ],
                "v2",
            ),
        };
        for (field, value) in mine {
            match value.as_deref() {
                None => add(field, format!("required when api = \"{api}\"")),
                Some("") => add(field, "must not be empty".into()),
                Some(_) => {}
            }
        }
        for (field, value) in theirs {
            if value.is_some() {
                add(field, format!("not used when api = \"{api}\""));
            }
        }
        if self.api == InfluxApi::V1 {
            match (&self.username, &self.password) {
                (Some(_), None) => add("password", "required when username is set".into()),
                (None, Some(_)) => add("username", "required when password is set".into()),
                (Some(u), Some(_)) if u.is_empty() => add("username", "must not be empty".into()),
                _ => {}
            }
        }
        if let Some(token) = &self.token {
            if token.is_empty() {
                add("token", "must not be empty".into());
            } else if HeaderValue::from_str(&format!("Token {token}")).is_err() {
                add(
                    "token",
                    "contains characters an HTTP header cannot carry".into(),
                );
            }
        }

        if self.batch_max_lines == 0 {
            add("batch_max_lines", "must be at least 1".into());
        } else if self.batch_max_lines > MAX_BATCH_LINES {
            add(
                "batch_max_lines",
                format!(
                    "must be at most {MAX_BATCH_LINES}: bigger requests exceed servers' body size \
                     limits (InfluxDB 1.x: 25 MB) and would be refused"
                ),
            );
        }
        if self.queue_max_batches == 0 {
            add("queue_max_batches", "must be at least 1".into());
        }
        if !(MIN_QUEUE_BYTES..=MAX_QUEUE_BYTES).contains(&self.queue_max_bytes) {
            add(
                "queue_max_bytes",
                format!("must be from {MIN_QUEUE_BYTES} (64 KiB) to {MAX_QUEUE_BYTES} (16 GiB)"),
            );
        }
        if self.queue_max_age_s < 60 {
            add("queue_max_age_s", "must be at least 60".into());
        } else if self.queue_max_age_s > 10 * 365 * 24 * 3600 {
            add("queue_max_age_s", "must be at most 10 years".into());
        }
        if !(1..=60_000).contains(&self.sync_interval_ms) {
            add("sync_interval_ms", "must be from 1 to 60000".into());
        }
        if self.timeout_ms == 0 {
            add("timeout_ms", "must be at least 1".into());
        }
        p
    }
}

/// Redacts `password` and `token`, so a config can be logged.
impl fmt::Debug for InfluxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("InfluxConfig")
            .field("url", &redact_url(&self.url))
            .field("api", &self.api)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field("token", &redacted(&self.token))
            .field("batch_max_lines", &self.batch_max_lines)
            .field("flush_interval_ms", &self.flush_interval_ms)
            .field("queue_max_batches", &self.queue_max_batches)
            .field("queue_max_bytes", &self.queue_max_bytes)
            .field("queue_max_age_s", &self.queue_max_age_s)
            .field("sync_interval_ms", &self.sync_interval_ms)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// The URL with any password in it replaced (`problems` refuses such URLs, but a config
/// may be printed before it is checked).
fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) if url.contains('@') => "<unparsable URL, redacted>".to_string(),
        Err(_) => url.to_string(),
    }
}

/// Where and how to send write requests: built once from a config without problems.
#[derive(Clone)]
pub(crate) struct WriteTarget {
    /// The full write URL, parameters included. Holds no secret.
    pub(crate) url: Url,
    pub(crate) auth: Auth,
}

#[derive(Clone)]
pub(crate) enum Auth {
    None,
    Basic {
        username: String,
        password: String,
    },
    /// `Token <token>`, marked sensitive so it is never printed.
    Header(HeaderValue),
}

impl WriteTarget {
    /// The write URL and credentials, or every problem of the config.
    pub(crate) fn new(cfg: &InfluxConfig) -> Result<Self, Vec<(String, String)>> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(problems);
        }
        let bad = |m: &str| vec![("url".to_string(), m.to_string())];
        let mut url = Url::parse(&cfg.url).map_err(|e| bad(&e.to_string()))?;
        let base = url.path().trim_end_matches('/').to_string();
        let (path, params, auth) = match cfg.api {
            InfluxApi::V1 => (
                "write",
                vec![("db", cfg.db.clone().unwrap_or_default())],
                match (&cfg.username, &cfg.password) {
                    (Some(u), Some(p)) => Auth::Basic {
                        username: u.clone(),
                        password: p.clone(),
                    },
                    _ => Auth::None,
                },
            ),
            InfluxApi::V2 => (
                "api/v2/write",
                vec![
                    ("org", cfg.org.clone().unwrap_or_default()),
                    ("bucket", cfg.bucket.clone().unwrap_or_default()),
                ],
                match &cfg.token {
                    Some(t) => {
                        let mut v = HeaderValue::from_str(&format!("Token {t}"))
                            .map_err(|_| vec![("token".to_string(), "not a header".into())])?;
                        v.set_sensitive(true);
                        Auth::Header(v)
                    }
                    None => Auth::None,
                },
            ),
        };
        url.set_path(&format!("{base}/{path}"));
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &params {
                q.append_pair(k, v);
            }
            q.append_pair("precision", "ms");
        }
        Ok(WriteTarget { url, auth })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> InfluxConfig {
        InfluxConfig {
            db: Some("shouwang".into()),
            ..InfluxConfig::new("http://127.0.0.1:8428", InfluxApi::V1)
        }
    }

    fn v2() -> InfluxConfig {
        InfluxConfig {
            org: Some("estate".into()),
            bucket: Some("readings".into()),
            token: Some("s3cr3t-token".into()),
            ..InfluxConfig::new("https://influx.example:8086/", InfluxApi::V2)
        }
    }

    fn fields(cfg: &InfluxConfig) -> Vec<String> {
        cfg.problems().into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn a_minimal_toml_table_gets_the_documented_defaults() {
        let cfg: InfluxConfig =
            toml::from_str("url = \"http://127.0.0.1:8428\"\napi = \"v1\"\ndb = \"x\"\n").unwrap();
        assert_eq!(
            (
                cfg.batch_max_lines,
                cfg.flush_interval_ms,
                cfg.queue_max_batches,
                cfg.timeout_ms
            ),
            (5000, 1000, 10_000, 5000)
        );
        assert_eq!(
            (
                cfg.queue_max_bytes,
                cfg.queue_max_age_s,
                cfg.sync_interval_ms
            ),
            (64 << 20, 604_800, 1000)
        );
        assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    }

    #[test]
    fn unknown_keys_and_apis_are_refused() {
        assert!(
            toml::from_str::<InfluxConfig>("url = \"http://x\"\napi = \"v1\"\ndbname = \"x\"")
                .is_err()
        );
        assert!(toml::from_str::<InfluxConfig>("url = \"http://x\"\napi = \"v3\"").is_err());
    }

    #[test]
    fn valid_configs_have_no_problems() {
        assert_eq!(v1().problems(), vec![]);
        assert_eq!(v2().problems(), vec![]);
        let with_auth = InfluxConfig {
            username: Some("gw".into()),
            password: Some("pw".into()),
            ..v1()
        };
        assert_eq!(with_auth.problems(), vec![]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let cfg = InfluxConfig {
            url: "ftp://x".into(),
            db: None,
            token: Some("t".into()),
            username: Some("u".into()),
            batch_max_lines: 0,
            queue_max_batches: 0,
            timeout_ms: 0,
            ..v1()
        };
        let problems = cfg.problems();
        assert!(problems.contains(&("db".into(), "required when api = \"v1\"".into())));
        assert!(problems.contains(&("batch_max_lines".into(), "must be at least 1".into())));
        let huge = InfluxConfig {
            batch_max_lines: 100_001,
            ..v1()
        };
        assert_eq!(fields(&huge), ["batch_max_lines"]);
        assert_eq!(
            fields(&cfg),
            [
                "url",
                "db",
                "token",
                "password",
                "batch_max_lines",
                "queue_max_batches",
                "timeout_ms"
            ]
        );
    }

    #[test]
    fn queue_bounds_outside_their_range_are_refused_by_name() {
        let cfg = InfluxConfig {
            queue_max_bytes: 1000,
            queue_max_age_s: 59,
            sync_interval_ms: 0,
            ..v1()
        };
        assert_eq!(
            fields(&cfg),
            ["queue_max_bytes", "queue_max_age_s", "sync_interval_ms"]
        );
        let huge = InfluxConfig {
            queue_max_bytes: 1 << 40,
            sync_interval_ms: 60_001,
            ..v1()
        };
        assert_eq!(fields(&huge), ["queue_max_bytes", "sync_interval_ms"]);
        let edges = InfluxConfig {
            queue_max_bytes: MIN_QUEUE_BYTES,
            queue_max_age_s: 60,
            sync_interval_ms: 60_000,
            ..v1()
        };
        assert_eq!(edges.problems(), vec![]);
    }

    #[test]
    fn v2_needs_org_and_bucket_but_not_v1_fields() {
        let cfg = InfluxConfig {
            org: None,
            bucket: Some(String::new()),
            db: Some("x".into()),
            ..v2()
        };
        assert_eq!(fields(&cfg), ["org", "bucket", "db"]);
        let token_free = InfluxConfig {
            token: None,
            ..v2()
        };
        assert_eq!(token_free.problems(), vec![]);
    }

    #[test]
    fn urls_are_checked_for_scheme_credentials_and_query() {
        for (url, needle) in [
            ("not a url", "not an http(s) URL"),
            ("mqtt://host:1883", "not an http(s) URL"),
            ("http://user:pw@host:8428", "credentials"),
            ("http://host:8428/?db=x", "without ?query"),
        ] {
            let cfg = InfluxConfig {
                url: url.into(),
                ..v1()
            };
            let problems = cfg.problems();
            assert_eq!(problems.len(), 1, "{url}: {problems:?}");
            assert_eq!(problems[0].0, "url");
            assert!(problems[0].1.contains(needle), "{url}: {problems:?}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_password_or_token() {
        let cfg = InfluxConfig {
            url: "http://u:urlpass@h".into(),
            username: Some("gw".into()),
            password: Some("hunter2".into()),
            token: Some("s3cr3t-token".into()),
            ..v1()
        };
        let printed = format!("{cfg:?}");
        for secret in ["hunter2", "s3cr3t-token", "urlpass"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("<redacted>"), "{printed}");
        assert!(printed.contains("gw"), "{printed}");
    }

    #[test]
    fn v1_writes_go_to_write_with_db_and_ms_precision() {
        let t = WriteTarget::new(&InfluxConfig {
            db: Some("my db&x".into()),
            username: Some("gw".into()),
            password: Some("pw".into()),
            ..v1()
        })
        .unwrap();
        assert_eq!(
            t.url.as_str(),
            "http://127.0.0.1:8428/write?db=my+db%26x&precision=ms"
        );
        assert!(matches!(t.auth, Auth::Basic { .. }));
    }

    #[test]
    fn v2_writes_go_to_api_v2_write_with_a_sensitive_token_header() {
        let t = WriteTarget::new(&v2()).unwrap();
        assert_eq!(
            t.url.as_str(),
            "https://influx.example:8086/api/v2/write?org=estate&bucket=readings&precision=ms"
        );
        let Auth::Header(h) = &t.auth else {
            panic!("no token header")
        };
        assert!(h.is_sensitive());
        assert_eq!(h.to_str().unwrap(), "Token s3cr3t-token");
    }

    #[test]
    fn a_path_in_the_base_url_is_kept() {
        let t = WriteTarget::new(&InfluxConfig {
            url: "http://vm:8428/influx/".into(),
            ..v1()
        })
        .unwrap();
        assert_eq!(
            t.url.as_str(),
            "http://vm:8428/influx/write?db=shouwang&precision=ms"
        );
    }

    #[test]
    fn a_config_with_problems_gives_no_target() {
        let problems = WriteTarget::new(&InfluxConfig { db: None, ..v1() })
            .err()
            .unwrap();
        assert_eq!(problems[0].0, "db");
    }
}
