//! Thumbnail benchmark (`cargo bench --bench media`); see docs/performance.md.
//!
//! 1. *Generation*: a 2000×1500 JPEG and PNG (made here) are thumbnailed to 320×240 with
//!    `scale` and with `crop` by `plait::service::media::thumbnail::generate` (decode, resize,
//!    encode), `PLAIT_BENCH_ROUNDS` times each (10 by default).
//! 2. *Cached hits*: an in-process server on 127.0.0.1:0 with a temporary database; one user
//!    uploads the JPEG, asks for the 320×240 crop once (generated and cached), then asks
//!    `PLAIT_BENCH_HITS` more times (200 by default), one request at a time, over HTTP.
//!
//! Every loop is bounded; the server stops when the run ends. `PLAIT_BENCH_QUICK=1` runs
//! 2 rounds and 20 hits.

use std::{io::Cursor, sync::Arc, time::Instant};

use plait::service::media::thumbnail::{generate, Wanted};
use serde_json::{json, Value};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn picture(format: image::ImageFormat) -> Vec<u8> {
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(2000, 1500, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x ^ y) % 256) as u8])
    }));
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// Median, 90th percentile and maximum of durations in milliseconds.
fn summary(mut samples: Vec<f64>) -> String {
    samples.sort_by(f64::total_cmp);
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction).round() as usize];
    format!(
        "median {:.2} ms, p90 {:.2} ms, max {:.2} ms ({} runs)",
        at(0.5),
        at(0.9),
        at(1.0),
        samples.len()
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::var("PLAIT_BENCH_QUICK").is_ok_and(|value| value == "1");
    let rounds = env_number("PLAIT_BENCH_ROUNDS", if quick { 2 } else { 10 });
    let hits = env_number("PLAIT_BENCH_HITS", if quick { 20 } else { 200 });
    let jpeg = picture(image::ImageFormat::Jpeg);
    let png = picture(image::ImageFormat::Png);
    println!(
        "source: 2000x1500, JPEG {} KiB, PNG {} KiB",
        jpeg.len() / 1024,
        png.len() / 1024
    );
    let mut results = serde_json::Map::new();
    for (format, bytes, kind) in [("jpeg", &jpeg, "image/jpeg"), ("png", &png, "image/png")] {
        for method in ["scale", "crop"] {
            let wanted = Wanted::new(320, 240, Some(method), false).unwrap();
            let mut samples = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let started = Instant::now();
                let (thumbnail, _) = generate(bytes, Some(kind), wanted).unwrap().unwrap();
                samples.push(started.elapsed().as_secs_f64() * 1000.0);
                assert!(!thumbnail.is_empty());
            }
            let line = summary(samples.clone());
            println!("generate {format} -> 320x240 {method}: {line}");
            results.insert(format!("generate_{format}_{method}"), json!(line));
        }
    }

    // Cached hits through the HTTP API.
    let dir = tempfile::tempdir().unwrap();
    let config = plait::Config {
        database_path: dir.path().join("db"),
        ..plait::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let services = plait::Services::build(Arc::new(config)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(plait::serve(
        plait::Listeners {
            client: listener,
            federation: None,
        },
        Arc::clone(&services),
        async {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    let register = format!("{base}/_matrix/client/v3/register");
    let first: Value = http
        .post(&register)
        .json(&json!({"username": "bench", "password": "bench-password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = first["session"].as_str().unwrap();
    let registered: Value = http
        .post(&register)
        .json(&json!({"username": "bench", "password": "bench-password",
                      "auth": {"type": "m.login.dummy", "session": session}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["access_token"].as_str().unwrap().to_owned();
    let uploaded: Value = http
        .post(format!("{base}/_matrix/media/v3/upload"))
        .bearer_auth(&token)
        .header("content-type", "image/jpeg")
        .body(jpeg.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let uri = uploaded["content_uri"].as_str().unwrap();
    let url = format!(
        "{base}/_matrix/client/v1/media/thumbnail/{}?width=320&height=240&method=crop",
        uri.strip_prefix("mxc://").unwrap()
    );
    let fetch = || async {
        let started = Instant::now();
        let response = http.get(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.bytes().await.unwrap();
        assert!(!body.is_empty());
        started.elapsed().as_secs_f64() * 1000.0
    };
    let miss = fetch().await;
    println!("first request (generated and cached): {miss:.2} ms");
    let mut samples = Vec::with_capacity(hits);
    for _ in 0..hits {
        samples.push(fetch().await);
    }
    assert_eq!(services.media.thumbnails_generated(), 1);
    let line = summary(samples);
    println!("cached hit over HTTP, 320x240 crop: {line}");
    results.insert("first_request_ms".into(), json!(miss));
    results.insert("cached_hit".into(), json!(line));
    println!("BENCH_JSON {}", Value::Object(results));
    let _ = stop.send(());
    let _ = server.await;
}
