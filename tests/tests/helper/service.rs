//! The real worker under the supervisor with a chosen environment: the
//! service as a client sees it (chat, stream, health).

use super::*;

/// A supervisor running the real worker with `env` in `[apps.env]`, ready.
pub struct Service {
    pub sup: Supervisor,
    pub addr: SocketAddr,
}

impl Service {
    pub fn start(instances: u32, env: &[(&str, &str)]) -> Service {
        let mut extra = String::from("[apps.env]\n");
        for (k, v) in env {
            extra.push_str(&format!("{k} = {v:?}\n"));
        }
        let keywords = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/keywords.json");
        if !env.iter().any(|(k, _)| *k == "KEYWORDS_CONFIG") {
            extra.push_str(&format!(
                "KEYWORDS_CONFIG = {:?}\n",
                keywords.display().to_string()
            ));
        }
        let given = |name: &str| {
            env.iter()
                .any(|(k, _)| *k == name || k.strip_suffix("_FILE") == Some(name))
        };
        if !given("JWT_SECRET") {
            extra.push_str(&format!("JWT_SECRET = {SECRET:?}\n"));
        }
        // Required with NODE_ENV=production (the development value is public).
        if !given("HEARTALK_API_KEY") {
            extra.push_str(&format!("HEARTALK_API_KEY = {API_KEY:?}\n"));
        }
        let mut sup = Supervisor::start(&real_worker_config(&instances.to_string(), &extra));
        let addr = sup.addr();
        sup.wait_ready(instances as usize);
        Service { sup, addr }
    }

    /// Env for live mode against `ark` (the §15 set-up).
    pub fn live_env(base_url: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AI_PROVIDER_MODE", "live".into()),
            ("BYTEPLUS_API_KEY", "test-key".into()),
            ("BYTEPLUS_BASE_URL", base_url.to_string()),
            ("BYTEPLUS_AMI_CHAT_EP", "ep-chat".into()),
            ("BYTEPLUS_AMI_WORK_ASSISTANT_EP", "ep-work".into()),
        ]
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        post_json(self.addr, path, Some(&user_token()), body)
    }

    /// `POST /api/v1/chat/generate` with one user message (any status).
    pub fn generate(&self, text: &str) -> Response {
        self.post(
            "/api/v1/chat/generate",
            &json!({"messages":[{"role":"user","content":text}]}),
        )
    }

    /// [`Service::generate`], asserting a 200.
    pub fn ask(&self, text: &str) -> Response {
        let r = self.generate(text);
        assert_eq!(r.status, 200, "{}", r.body);
        r
    }

    /// `data.services.cache` of `/api/v1/health` (200 whether healthy or
    /// degraded: asserted).
    pub fn cache_health(&self) -> Value {
        let r = http_get(self.addr, "/api/v1/health", Duration::from_secs(5)).expect("health");
        assert_eq!(r.status, 200, "degraded is still 200: {}", r.body);
        r.json()["data"]["services"]["cache"].clone()
    }

    /// `ai_redis_up` on `/metrics` (`None`: no such series).
    pub fn redis_up(&self) -> Option<f64> {
        metric(self.addr, "ai_redis_up", "")
    }

    /// The supervisor's log file so far (raw: a line may be half written).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.sup.log_dir().join("heartalk.log")).unwrap_or_default()
    }
}

/// Starts a live-mode service on `ark`, plus `more` env.
pub fn live_service(ark_url: &str, more: &[(&str, &str)]) -> Service {
    let mut env = Service::live_env(ark_url);
    env.extend(more.iter().map(|(k, v)| (*k, v.to_string())));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Service::start(1, &refs)
}
