//! Streaming export of telemetry as CSV or JSON, for any set of devices (one device, a fleet,
//! several fleets), a time range, tags and keys. A blocking producer reads the store series by
//! series and hands 64 KiB chunks through a bounded channel, so memory stays constant however
//! large the export and a client that stops reading stops the producer.

use std::collections::HashSet;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use crate::model::{DeviceId, Millis, Value};
use crate::store::ports::{StoreError, TelemetryStore};

/// Bytes gathered before a chunk is handed to the client.
const CHUNK: usize = 64 * 1024;
/// Chunks buffered between the producer and the client.
const IN_FLIGHT: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    pub fn parse(s: Option<&str>) -> Option<Format> {
        match s {
            None | Some("csv") => Some(Format::Csv),
            Some("json") => Some(Format::Json),
            _ => None,
        }
    }
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
        }
    }
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportSpec {
    /// Devices with their names (the name goes into every row).
    pub devices: Vec<(DeviceId, String)>,
    /// Tags to include; all when `None`.
    pub tags: Option<Vec<String>>,
    /// Keys to include; all when `None`.
    pub keys: Option<Vec<String>>,
    pub from: Millis,
    pub to: Millis,
    pub format: Format,
}

pub const CSV_HEADER: &str = "device_id,device,tag,key,ts,time,value\n";

/// Writes one CSV field (RFC 4180): quoted when it holds a comma, a quote, CR or LF, with
/// quotes doubled. Other control characters (NUL, escapes, DEL, C1; a string value may hold
/// any, and keys stored before they were refused may too) have no CSV form and break the
/// tools that read it: each becomes U+FFFD. Tabs stay.
fn csv_field(out: &mut Vec<u8>, s: &str) {
    let quote = s.contains([',', '"', '\n', '\r']);
    if quote {
        out.push(b'"');
    }
    let mut utf8 = [0u8; 4];
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\"\""),
            '\t' | '\n' | '\r' => out.push(c as u8),
            c if c.is_control() => out.extend_from_slice("\u{fffd}".as_bytes()),
            c => out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes()),
        }
    }
    if quote {
        out.push(b'"');
    }
}

fn rfc3339(ts: Millis) -> String {
    jiff::Timestamp::from_millisecond(ts)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Long(l) => l.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Str(s) => s.clone(),
        Value::Json(j) => j.to_string(),
    }
}

/// Starts the export; the receiver yields the body in chunks. Errors while reading end the
/// stream with an error, which aborts the HTTP response (the client sees it truncated).
pub fn spawn(
    store: std::sync::Arc<dyn TelemetryStore>,
    spec: ExportSpec,
) -> mpsc::Receiver<Result<Bytes, std::io::Error>> {
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    // Driven on the blocking pool: the embedded engine reads the disk as the export goes.
    tokio::spawn(crate::workers::on_blocking_pool(move || async move {
        if let Err(e) = produce(&*store, &spec, &tx).await {
            tracing::warn!(error = %e, "export stopped");
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
    }));
    rx
}

/// The client went away: stop quietly.
struct Gone;

async fn flush(
    buf: &mut Vec<u8>,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), Gone> {
    let chunk = Bytes::from(std::mem::replace(buf, Vec::with_capacity(CHUNK + 1024)));
    tx.send(Ok(chunk)).await.map_err(|_| Gone)
}

async fn produce(
    store: &dyn TelemetryStore,
    spec: &ExportSpec,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), StoreError> {
    let mut buf = Vec::with_capacity(CHUNK + 1024);
    let mut first = true;
    match spec.format {
        Format::Csv => buf.extend_from_slice(CSV_HEADER.as_bytes()),
        Format::Json => buf.push(b'['),
    }
    let tags: Option<HashSet<&String>> = spec.tags.as_ref().map(|t| t.iter().collect());
    let keys: Option<HashSet<&String>> = spec.keys.as_ref().map(|k| k.iter().collect());
    for (device, name) in &spec.devices {
        let mut series = store.device_series(*device).await?;
        series.retain(|s| {
            tags.as_ref().is_none_or(|t| t.contains(&s.tag))
                && keys.as_ref().is_none_or(|k| k.contains(&s.key))
        });
        series.sort();
        let id = device.to_string();
        for s in series {
            let mut points = store.scan_series(*device, &s.tag, &s.key, spec.from, spec.to);
            while let Some(point) = points.next().await {
                let (ts, value) = point?;
                match spec.format {
                    Format::Csv => {
                        buf.extend_from_slice(id.as_bytes());
                        buf.push(b',');
                        csv_field(&mut buf, name);
                        buf.push(b',');
                        csv_field(&mut buf, &s.tag);
                        buf.push(b',');
                        csv_field(&mut buf, &s.key);
                        buf.extend_from_slice(format!(",{ts},{},", rfc3339(ts)).as_bytes());
                        csv_field(&mut buf, &value_text(&value));
                        buf.push(b'\n');
                    }
                    Format::Json => {
                        if !first {
                            buf.push(b',');
                        }
                        let row = json!({"device_id": id, "device": name, "tag": s.tag,
                            "key": s.key, "ts": ts, "value": value});
                        buf.extend_from_slice(row.to_string().as_bytes());
                    }
                }
                first = false;
                if buf.len() >= CHUNK && flush(&mut buf, tx).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    if spec.format == Format::Json {
        buf.extend_from_slice(b"]\n");
    }
    let _ = flush(&mut buf, tx).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        let mut out = Vec::new();
        csv_field(&mut out, "plain");
        out.push(b'|');
        csv_field(&mut out, "a,\"b\"");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "plain|\"a,\"\"b\"\"\""
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn csv_fields_carry_no_raw_control_characters() {
        let field = |s: &str| {
            let mut out = Vec::new();
            csv_field(&mut out, s);
            String::from_utf8(out).expect("utf8")
        };
        assert_eq!(field("a\0b"), "a\u{fffd}b");
        assert_eq!(
            field("\x1b[31mred\x7f\u{85}"),
            "\u{fffd}[31mred\u{fffd}\u{fffd}"
        );
        // Line breaks are legal inside a quoted field; tabs need nothing.
        assert_eq!(field("two\r\nlines"), "\"two\r\nlines\"");
        assert_eq!(field("a\tb"), "a\tb");
        assert_eq!(field("say \"hi\"\0"), "\"say \"\"hi\"\"\u{fffd}\"");
        assert_eq!(field("x,\"y\"\0"), "\"x,\"\"y\"\"\u{fffd}\"");
        assert_eq!(field("température ✓"), "température ✓");
    }
}
