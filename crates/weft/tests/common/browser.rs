//! A real browser for the page tests: Debian's chromium, headless, driven through
//! chromium-driver (WebDriver) with fantoccini.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use serde_json::json;

/// chromedriver on a port of its own, and the chromium it starts with a profile of its own:
/// both stopped with the test, passed or failed (chromium outlives its driver otherwise).
pub struct Driver(Child, u16, std::path::PathBuf);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        // By the profile's path, after `--`: a pattern beginning with `--user-data-dir=`
        // reads to pkill as an option it does not know, and it killed nothing.
        let profile = self.2.display().to_string();
        let _ = Command::new("pkill").args(["-KILL", "-f", "--", &profile]).status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A headless chromium with its profile in `profile`, and a WebDriver session on it.
pub async fn start(profile: &std::path::Path) -> (Driver, fantoccini::Client) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver: scripts/setup.sh test installs it)");
    let driver = Driver(child, port, profile.to_path_buf());
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": "/usr/bin/chromium", "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,950",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            format!("--user-data-dir={}", profile.display()),
        ]}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = weft_testkit::eventually("chromedriver answering", Duration::from_secs(20), async || {
        ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{}", driver.1))
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    (driver, client)
}

/// Signs in on the sign-in page the browser is on, and waits until the form's answer has led
/// to the page (a navigation before that would cancel the form's, and its cookie with it).
pub async fn sign_in(c: &fantoccini::Client, token: &str) {
    c.find(Locator::Id("token")).await.unwrap().send_keys(token).await.unwrap();
    c.find(Locator::Id("sign-in")).await.unwrap().click().await.unwrap();
    c.wait().at_most(Duration::from_secs(20)).for_element(Locator::Id("graph")).await.unwrap();
}

/// Keeps a screenshot of the page under target/test-artifacts.
pub async fn keep_screenshot(c: &fantoccini::Client, name: &str) {
    let screenshot = c.screenshot().await.unwrap();
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join(name), screenshot).unwrap();
}
