//! The review page in headless Chromium (Debian's `chromium` and `chromium-driver`, which
//! `tests/run` installs), driven over WebDriver: open a finished job, give the API key, expand the
//! tree to a section, move to an item with the keyboard and see its evidence highlighted in the
//! section's text, edit the item's answer and approve it with the keyboard, then check the result
//! through the API.
//!
//! `PRINCIPIA_SCREENSHOT=docs/review-page.png` also saves a screenshot of the page there.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// `chromedriver` on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(driver: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, chromium: &Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1500,950", "--force-device-scale-factor=1", "--lang=en-US"],
        }),
    );
    ClientBuilder::rustls()
        .expect("TLS setup")
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Wait until `script` (a JavaScript expression) is true in the page.
async fn until(client: &Client, script: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = client
            .execute(&format!("return !!({script});"), vec![])
            .await
            .unwrap();
        if value == Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let status = client
                .execute(
                    "return document.getElementById('status') ? document.getElementById('status').textContent : ''",
                    vec![],
                )
                .await
                .unwrap_or_default();
            panic!("the page never got to: {what} (status line: {status})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reviewer_follows_an_item_to_its_evidence_edits_and_approves_it() {
    let (Some(chromium), Some(chromedriver)) = (
        find_program(&["chromium", "chromium-browser"]),
        find_program(&["chromedriver"]),
    ) else {
        panic!(
            "Chromium and chromedriver are needed: `tests/run` installs them (apt-get install chromium chromium-driver)"
        );
    };
    let server = Server::start(false).await;
    server.start_workers();
    let key = server.key("acme").await;
    let job = server.start_job(&key, 300).await;
    let done = server
        .wait_for_status(&key, &job, &["completed", "failed"])
        .await;
    assert_eq!(done["status"], "completed", "{done:#}");
    let review = format!("/v1/flow/alignment/{job}/review");

    // A section with at least two items whose evidence is in its text, as the API tells.
    let outputs = server
        .ok(&format!("/v1/flow/alignment/{job}/outputs"), &key)
        .await;
    let (_, bytes) = server
        .bytes(
            &format!(
                "/v1/flow/files/{}/content",
                outputs[0]["id"].as_str().unwrap()
            ),
            &key,
        )
        .await;
    let records = proto::dataset::decode_parquet(bytes).unwrap().0;
    let mut section = Value::Null;
    for record in &records {
        let candidate = server
            .ok(&format!("{review}/sections/{}", record.node_id), &key)
            .await;
        if candidate["total"].as_u64().unwrap() >= 2
            && candidate["ancestors"].as_array().unwrap().len() >= 3
            && candidate["items"][1]["evidence"][0]["char_start"].is_u64()
        {
            section = candidate;
            break;
        }
    }
    assert!(section.is_object(), "a section with two items");
    let node_id = section["node"]["node_id"].as_str().unwrap().to_string();
    let target = section["items"][1].clone();
    let record_id = target["record_id"].as_str().unwrap().to_string();

    let driver = Driver::start(&chromedriver);
    let client = browser(&driver, &chromium).await;
    client.set_window_size(1500, 950).await.unwrap();
    client
        .goto(&format!("{}/review/{job}", server.url))
        .await
        .unwrap();

    // The page asks for the key, and keeps it for the tab.
    let input = client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#key-form:not([hidden]) #key-input"))
        .await
        .expect("the key prompt");
    input.send_keys(&key).await.unwrap();
    client
        .find(Locator::Css("#key-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &client,
        "document.querySelectorAll('#tree .node-label').length > 1",
        "the tree",
    )
    .await;
    let summary = client
        .find(Locator::Id("job-summary"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        summary.contains(&format!("{} items", records.len())),
        "{summary}"
    );

    // Expand the tree down to the section (the root's level is open already), then open it.
    let ancestors = section["ancestors"].as_array().unwrap();
    for ancestor in &ancestors[1..ancestors.len() - 1] {
        let id = ancestor["node_id"].as_str().unwrap();
        let toggle = client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(&format!(
                "li[data-node='{id}'] > .node > .toggle"
            )))
            .await
            .unwrap();
        toggle.click().await.unwrap();
    }
    let label = client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(&format!(
            "button.node-label[data-node='{node_id}']"
        )))
        .await
        .unwrap();
    label.click().await.unwrap();
    until(
        &client,
        "document.querySelectorAll('#items .item').length >= 2",
        "the section's items",
    )
    .await;
    let heading = client
        .find(Locator::Id("section-heading"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(heading, section["node"]["label"].as_str().unwrap());

    // The first item is selected; `j` moves to the second, whose evidence is highlighted.
    let first = client
        .find(Locator::Css("#items .item.selected"))
        .await
        .unwrap();
    first.send_keys("j").await.unwrap();
    until(
        &client,
        &format!(
            "document.querySelector('#items .item.selected') && document.querySelector('#items .item.selected').dataset.record === '{record_id}'"
        ),
        "the second item selected",
    )
    .await;
    let marks = client
        .find_all(Locator::Css("#section-text mark"))
        .await
        .unwrap();
    assert!(!marks.is_empty(), "the evidence is highlighted");
    let highlighted = marks[0].text().await.unwrap();
    let quote = target["evidence"][0]["quote"].as_str().unwrap();
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(squash(&highlighted), squash(quote));

    // `e` edits: change the answer and save.
    let selected = client
        .find(Locator::Css("#items .item.selected"))
        .await
        .unwrap();
    selected.send_keys("e").await.unwrap();
    let answer = client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#items .item.selected .edit-answer"))
        .await
        .unwrap();
    let edited = format!(
        "{} Reviewed: this applies to every consumer loan.",
        target["answer"].as_str().unwrap()
    );
    answer.clear().await.unwrap();
    answer.send_keys(&edited).await.unwrap();
    client
        .find(Locator::Css("#items .item.selected .edit-form .save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &client,
        "document.querySelector('#items .item.selected .badge.changed') !== null",
        "the item marked human-edited",
    )
    .await;

    // `a` approves it (the saved item keeps the focus).
    let selected = client
        .find(Locator::Css("#items .item.selected"))
        .await
        .unwrap();
    selected.send_keys("a").await.unwrap();
    until(
        &client,
        "document.querySelector('#items .item.selected.approved') !== null",
        "the item approved",
    )
    .await;
    until(
        &client,
        "document.getElementById('job-summary').textContent.includes('1 approved')",
        "the counts updated",
    )
    .await;

    // Through the API: approved, human-edited, with the new answer.
    let item = server
        .ok(&format!("{review}/items/{record_id}"), &key)
        .await;
    assert_eq!(item["status"], "approved", "{item:#}");
    assert_eq!(item["human_edited"], true);
    assert_eq!(item["answer"], edited.as_str());
    assert_eq!(item["original_answer"], target["answer"]);

    // Select the edited item again so the screenshot shows its evidence.
    if let Ok(path) = std::env::var("PRINCIPIA_SCREENSHOT") {
        let png = client.screenshot().await.unwrap();
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path);
        std::fs::write(&path, png).unwrap();
    }

    // The list page links to the job.
    client
        .goto(&format!("{}/review", server.url))
        .await
        .unwrap();
    until(
        &client,
        &format!("document.querySelector(\"#jobs a[href='/review/{job}']\") !== null"),
        "the job listed",
    )
    .await;
    client.close().await.unwrap();
}
