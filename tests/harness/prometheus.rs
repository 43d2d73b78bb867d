//! A real Prometheus (the Debian package) scraping the daemon, queried through its API.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{PATIENCE, closed_port, daemon::curl_status};

/// A Prometheus server (the Debian package) scraping every second, on its own port.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Prometheus {
    /// Scrapes `target` over plain HTTP.
    pub fn start(target: std::net::SocketAddr) -> Self {
        Self::start_job(&format!(
            "  - job_name: tcpobs\n    static_configs:\n      - targets: ['{target}']\n"
        ))
    }

    /// Runs `job` (one `scrape_configs` entry, indented as a list item under it).
    pub fn start_job(job: &str) -> Self {
        let port = closed_port();
        let dir = std::env::temp_dir().join(format!("tcpobs-prometheus-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\nscrape_configs:\n{job}"),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus not installed: run `cargo xtask setup`");
        let prometheus = Self {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + PATIENCE;
        while curl_status("GET", &format!("{}/-/ready", prometheus.url), None, None).0 != 200 {
            assert!(Instant::now() < deadline, "Prometheus did not become ready");
            thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// The value of an instant query that returns one series.
    pub fn query(&self, query: &str) -> Option<f64> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = curl_status(
            "GET",
            &format!("{}/api/v1/query?query={encoded}", self.url),
            None,
            None,
        );
        assert_eq!(status, 200, "{query}: {body}");
        let response: Value = serde_json::from_str(&body).unwrap();
        let result = response["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{query} matches several series: {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` evaluates to `expected` (scrapes happen every second).
    pub fn expect(&self, query: &str, expected: f64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.query(query);
            if value == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus says {query} = {value:?}, expected {expected}"
            );
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
