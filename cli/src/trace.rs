//! `foodorder trace`: an order's trace as a waterfall in the terminal, read
//! from Jaeger's HTTP query API (`/api/traces`), which the local Jaeger
//! serves without its UI. Given an order id, the trace is the one whose
//! `PlaceOrder` span carries that `order_id`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long Jaeger may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct TraceArgs {
    /// A trace id (32 hex digits, as `x-trace-id` names it) or an order id (UUID).
    id: String,
    /// Jaeger's query API.
    #[arg(
        long,
        env = "JAEGER_QUERY_URL",
        default_value = "http://127.0.0.1:16686"
    )]
    jaeger: String,
    /// How far back to look for an order's trace.
    #[arg(long, default_value = "2d")]
    lookback: String,
    /// Width of the bars.
    #[arg(long, default_value_t = 40)]
    width: usize,
}

/// One span as the waterfall shows it.
#[derive(Debug, Clone)]
struct Span {
    id: String,
    parent: Option<String>,
    service: String,
    name: String,
    start_us: i64,
    duration_us: i64,
    error: Option<String>,
}

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let base = args.jaeger.trim_end_matches('/').to_owned();
    let trace_id = if is_trace_id(&args.id) {
        args.id.to_ascii_lowercase()
    } else if uuid::Uuid::parse_str(&args.id).is_ok() {
        find_order_trace(&base, &args.id, &args.lookback).await?
    } else {
        anyhow::bail!(
            "{:?} is neither a trace id (32 hex digits) nor an order id (a UUID)",
            args.id
        );
    };
    let (status, body) = get(&base, &format!("/api/traces/{trace_id}")).await?;
    anyhow::ensure!(
        status != 404,
        "trace {trace_id} is not in Jaeger at {base} (not sampled, not exported yet, or older than Jaeger keeps)"
    );
    anyhow::ensure!(
        status == 200,
        "Jaeger at {base} answered HTTP {status} for trace {trace_id}"
    );
    let spans = spans_of(&body)?;
    anyhow::ensure!(
        !spans.is_empty(),
        "trace {trace_id} has no spans in Jaeger at {base}"
    );
    print!(
        "{}",
        waterfall(&trace_id, &spans, args.width.clamp(10, 200))
    );
    Ok(())
}

fn is_trace_id(text: &str) -> bool {
    text.len() == 32 && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// The trace of the `PlaceOrder` call that made order `order_id`.
async fn find_order_trace(base: &str, order_id: &str, lookback: &str) -> anyhow::Result<String> {
    let tags = format!("{{\"order_id\":\"{order_id}\"}}");
    let path = format!(
        "/api/traces?service=order-api&operation=PlaceOrder&tags={}&lookback={}&limit=5",
        percent_encode(&tags),
        percent_encode(lookback)
    );
    let (status, body) = get(base, &path).await?;
    anyhow::ensure!(
        status == 200,
        "Jaeger at {base} answered HTTP {status} to a search for order {order_id}"
    );
    body["data"]
        .as_array()
        .and_then(|traces| traces.first())
        .and_then(|trace| trace["traceID"].as_str())
        .map(str::to_owned)
        .with_context(|| {
            format!("no trace of order {order_id} in Jaeger at {base} (within {lookback}; was it placed while tracing was on?)")
        })
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// GETs `path` from Jaeger: the status and the JSON body.
async fn get(base: &str, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let uri: http::Uri = format!("{base}{path}")
        .parse()
        .with_context(|| format!("{base} is not a URL"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "{base}: only http:// is supported (the local Jaeger's query API)"
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let request = http::Request::get(uri)
        .header("accept", "application/json")
        .body(Empty::new())?;
    let unreachable = |error: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "no answer from Jaeger's query API at {base} ({error}); is Jaeger running (JAEGER_QUERY_URL)?"
        )
    };
    let response = tokio::time::timeout(ANSWER_WITHIN, client.request(request))
        .await
        .map_err(|_| unreachable(&format!("nothing within {} s", ANSWER_WITHIN.as_secs())))?
        .map_err(|error| unreachable(&error))?;
    let status = response.status().as_u16();
    let body = tokio::time::timeout(ANSWER_WITHIN, response.into_body().collect())
        .await
        .map_err(|_| unreachable(&"the answer did not finish"))?
        .map_err(|error| unreachable(&error))?
        .to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// The spans of a `/api/traces/<id>` answer.
fn spans_of(body: &serde_json::Value) -> anyhow::Result<Vec<Span>> {
    let trace = body["data"]
        .as_array()
        .and_then(|traces| traces.first())
        .context("Jaeger's answer holds no trace")?;
    let services: HashMap<&str, &str> = trace["processes"]
        .as_object()
        .map(|processes| {
            processes
                .iter()
                .map(|(id, process)| (id.as_str(), process["serviceName"].as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    let raw = trace["spans"]
        .as_array()
        .context("Jaeger's trace has no spans list")?;
    let ids: std::collections::HashSet<&str> = raw
        .iter()
        .filter_map(|span| span["spanID"].as_str())
        .collect();
    Ok(raw
        .iter()
        .map(|span| {
            let tags: BTreeMap<&str, &serde_json::Value> = span["tags"]
                .as_array()
                .map(|tags| {
                    tags.iter()
                        .filter_map(|tag| Some((tag["key"].as_str()?, &tag["value"])))
                        .collect()
                })
                .unwrap_or_default();
            let failed = tags
                .get("error")
                .is_some_and(|value| value.as_bool() == Some(true))
                || tags
                    .get("otel.status_code")
                    .and_then(|value| value.as_str())
                    == Some("ERROR");
            let error = failed.then(|| {
                [
                    "otel.status_description",
                    "error.message",
                    "exception.message",
                    "rpc.grpc.status_code",
                ]
                .iter()
                .find_map(|key| {
                    tags.get(key)
                        .map(|value| format!("{key}={}", display(value)))
                })
                .unwrap_or_else(|| "error".to_owned())
            });
            Span {
                id: span["spanID"].as_str().unwrap_or_default().to_owned(),
                // The first reference to a span of this trace: its parent
                // (CHILD_OF), or the producer span a consumer continues.
                parent: span["references"].as_array().and_then(|references| {
                    references
                        .iter()
                        .filter_map(|reference| reference["spanID"].as_str())
                        .find(|id| ids.contains(id))
                        .map(str::to_owned)
                }),
                service: services
                    .get(span["processID"].as_str().unwrap_or_default())
                    .copied()
                    .unwrap_or("?")
                    .to_owned(),
                name: span["operationName"].as_str().unwrap_or("?").to_owned(),
                start_us: span["startTime"].as_i64().unwrap_or(0),
                duration_us: span["duration"].as_i64().unwrap_or(0),
                error,
            }
        })
        .collect())
}

fn display(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The waterfall: spans in tree order (children after their parent, by start),
/// indented by depth, each with its offset from the trace's start, its
/// duration, its service and a bar on the trace's time line.
fn waterfall(trace_id: &str, spans: &[Span], width: usize) -> String {
    let start = spans.iter().map(|span| span.start_us).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|span| span.start_us + span.duration_us)
        .max()
        .unwrap_or(start);
    let total = (end - start).max(1);
    let mut children: HashMap<Option<&str>, Vec<&Span>> = HashMap::new();
    for span in spans {
        children
            .entry(span.parent.as_deref())
            .or_default()
            .push(span);
    }
    for list in children.values_mut() {
        list.sort_by_key(|span| (span.start_us, span.name.clone()));
    }
    let mut ordered: Vec<(usize, &Span)> = Vec::new();
    let mut stack: Vec<(usize, &Span)> = children
        .get(&None)
        .map(|roots| roots.iter().rev().map(|span| (0, *span)).collect())
        .unwrap_or_default();
    while let Some((depth, span)) = stack.pop() {
        ordered.push((depth, span));
        if let Some(kids) = children.get(&Some(span.id.as_str())) {
            stack.extend(kids.iter().rev().map(|kid| (depth + 1, *kid)));
        }
    }
    let mut services: Vec<&str> = spans.iter().map(|span| span.service.as_str()).collect();
    services.sort_unstable();
    services.dedup();
    let errors = spans.iter().filter(|span| span.error.is_some()).count();
    let name_width = ordered
        .iter()
        .map(|(depth, span)| depth * 2 + span.name.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 60);
    let mut out = format!(
        "trace {trace_id}: {} spans, {} services ({}), {:.1} ms{}\n",
        spans.len(),
        services.len(),
        services.join(", "),
        total as f64 / 1000.0,
        if errors > 0 {
            format!(", {errors} with errors")
        } else {
            String::new()
        }
    );
    out += &format!(
        "{:>10} {:>10}  {:<22} {:<name_width$}  {}\n",
        "start ms", "took ms", "service", "span", "timeline"
    );
    for (depth, span) in ordered {
        let from = ((span.start_us - start) as f64 / total as f64 * width as f64) as usize;
        let length =
            ((span.duration_us as f64 / total as f64 * width as f64).round() as usize).max(1);
        let from = from.min(width - 1);
        let length = length.min(width - from);
        let bar = format!(
            "|{}{}{}|",
            " ".repeat(from),
            "#".repeat(length),
            " ".repeat(width - from - length)
        );
        let name = format!("{}{}", "  ".repeat(depth), span.name);
        out += &format!(
            "{:>10.1} {:>10.1}  {:<22} {:<name_width$}  {bar}{}\n",
            (span.start_us - start) as f64 / 1000.0,
            span.duration_us as f64 / 1000.0,
            span.service,
            name,
            span.error
                .as_deref()
                .map(|error| format!("  ERROR {error}"))
                .unwrap_or_default()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jaeger_answer_becomes_a_waterfall_in_tree_order() {
        let body = serde_json::json!({"data": [{
            "traceID": "ab",
            "processes": {"p1": {"serviceName": "order-api"}, "p2": {"serviceName": "payment-service"}},
            "spans": [
                {"spanID": "c", "operationName": "process order.placed", "processID": "p2",
                 "references": [{"refType": "CHILD_OF", "spanID": "b"}], "startTime": 1_000_400, "duration": 500,
                 "tags": [{"key": "otel.status_code", "value": "ERROR"}, {"key": "otel.status_description", "value": "gateway timeout"}]},
                {"spanID": "a", "operationName": "PlaceOrder", "processID": "p1", "references": [],
                 "startTime": 1_000_000, "duration": 1000, "tags": []},
                {"spanID": "b", "operationName": "publish order.placed", "processID": "p1",
                 "references": [{"refType": "CHILD_OF", "spanID": "a"}], "startTime": 1_000_200, "duration": 100, "tags": []},
            ]
        }]});
        let spans = spans_of(&body).unwrap();
        let text = waterfall("ab", &spans, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains(
                "3 spans, 2 services (order-api, payment-service), 1.0 ms, 1 with errors"
            ),
            "{text}"
        );
        assert!(
            lines[2].contains("PlaceOrder") && lines[2].contains("|##########|"),
            "{text}"
        );
        assert!(
            lines[3].contains("  publish order.placed") && lines[3].contains("0.2"),
            "{text}"
        );
        assert!(
            lines[4].contains("    process order.placed")
                && lines[4].contains("ERROR otel.status_description=gateway timeout"),
            "{text}"
        );
    }

    #[test]
    fn ids_are_told_apart() {
        assert!(is_trace_id("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(!is_trace_id("4bf92f3577b34da6"));
        assert_eq!(
            percent_encode("{\"a\":\"b c\"}"),
            "%7B%22a%22%3A%22b%20c%22%7D"
        );
    }
}
