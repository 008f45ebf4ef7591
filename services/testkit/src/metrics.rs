//! Reading a service's HTTP endpoint and its metrics in tests.

use std::time::Duration;

/// `GET path` on a service's HTTP endpoint: the status code and the body.
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|error| panic!("connect to the http endpoint {address}: {error}"));
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send the request");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("the http endpoint answers within 10 s")
    .expect("read the response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an http response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `series` (name with its labels exactly as
/// exposed, e.g. `foodorder_orders_placed_total` or
/// `foodorder_payment_outcomes_total{outcome="succeeded"}`) in a scrape, if present.
pub fn metric_value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Scrapes `/metrics` until `series` satisfies `condition` (bounded wait); returns its value.
pub async fn wait_for_metric(
    address: std::net::SocketAddr,
    series: &str,
    condition: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, scrape) = http_get(address, "/metrics").await;
        if let Some(value) = metric_value(&scrape, series)
            && condition(value)
        {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 60 s waiting for {series} to reach the expected value; last scrape:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
