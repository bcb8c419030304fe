//! The fuzz targets' entry points, shared by the `cargo fuzz` targets in `fuzz/` and the corpus
//! replay test `tests/it/fuzz_corpus.rs`: one function per target, each handing arbitrary bytes to
//! the decoders that devices (over MQTT and the HTTP device API), operators and the disk reach,
//! exactly as production calls them, and asserting what must hold beyond "does not panic":
//! encode→decode round trips and parse→serialize→parse stability. A failed check panics, which
//! is what a fuzzer reports. Not an API: hidden from the docs, free to change with the targets.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use serde_json::Value as Json;

use crate::config::Config;
use crate::devices::protocol::{self, DeviceTopic};
use crate::model::{DeviceId, IntegrationId, Millis, Value};
use crate::pki::{self, CertError, Pki};
use crate::store::wal::fuzzing as wal;
use crate::store::{Enqueue, PointsOp, codec};

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Every target by name: the name is the fuzz target's and its corpus directory's
/// (`fuzz/corpus/<name>/`). `csr` needs a CA and is separate (`csr`, `test_pki`).
pub const TARGETS: &[(&str, Target)] = &[
    ("topic", topic),
    ("telemetry", telemetry),
    ("attributes", attributes),
    ("conditions", conditions),
    ("rpc", rpc),
    ("wal_record", wal_record),
    ("wal_segment", wal_segment),
    ("codec", codec),
    ("config", config),
    ("certificate", certificate),
];

/// The receive time stamped on points without `ts`.
const NOW: Millis = 1_700_000_000_000;

/// A device topic: the grammar of `DeviceTopic::parse`, tag checks and filters.
pub fn topic(data: &[u8]) {
    // MQTT topics are UTF-8 (the codec refuses anything else before Corral sees it).
    let Ok(t) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = DeviceTopic::parse(t);
    let again = |s: String| assert_eq!(DeviceTopic::parse(&s), parsed, "{t:?} vs {s:?}");
    match &parsed {
        DeviceTopic::Telemetry => assert_eq!(t, protocol::TELEMETRY_TOPIC),
        DeviceTopic::Attributes => assert_eq!(t, protocol::ATTRIBUTES_TOPIC),
        DeviceTopic::Conditions => assert_eq!(t, protocol::CONDITIONS_TOPIC),
        DeviceTopic::Claim => assert_eq!(t, protocol::CLAIM_TOPIC),
        DeviceTopic::ProvisionRequest => assert_eq!(t, protocol::PROVISION_REQUEST_TOPIC),
        DeviceTopic::TaggedTelemetry(tag) => {
            again(format!("{}{tag}", protocol::TAGGED_TELEMETRY_PREFIX));
            if protocol::check_tag(tag).is_ok() {
                assert!(!tag.is_empty() && tag.len() <= protocol::MAX_TAG_LEN);
                assert!(!tag.contains(['/', '+', '#']), "{tag:?}");
            }
        }
        DeviceTopic::AttributeRequest(n) => {
            again(format!("{}{n}", protocol::ATTRIBUTES_REQUEST_PREFIX))
        }
        DeviceTopic::RpcRequest(n) => again(format!("{}{n}", protocol::RPC_REQUEST_PREFIX)),
        DeviceTopic::RpcResponse(n) => again(format!("{}{n}", protocol::RPC_RESPONSE_PREFIX)),
        DeviceTopic::PackageChunk {
            kind,
            request,
            chunk,
        } => {
            let prefix = match kind {
                crate::model::PackageKind::Firmware => "fw",
                crate::model::PackageKind::Software => "sw",
            };
            again(format!("v2/{prefix}/request/{request}/chunk/{chunk}"))
        }
        // A wildcard is never a topic this device may publish to.
        DeviceTopic::Foreign => {}
        DeviceTopic::Unknown => {
            assert!(
                !(t.contains(['+', '#'])
                    && !t.starts_with("v1/devices/me/")
                    && !t.starts_with("v2/")),
                "{t:?}"
            );
        }
    }
    if protocol::is_device_filter(t) {
        assert!(protocol::DEVICE_FILTERS.contains(&t));
    }
}

/// A telemetry payload, then the WAL record its points are logged in.
pub fn telemetry(data: &[u8]) {
    let Ok(points) = protocol::parse_telemetry(data, NOW) else {
        return;
    };
    for (_, values) in &points {
        assert!(!values.is_empty(), "empty groups are dropped");
        check_values(values);
    }
    let op = PointsOp {
        device: DeviceId(uuid::Uuid::from_u128(7)),
        tag: crate::model::DEFAULT_TAG.into(),
        points,
    };
    // What the WAL replays is what was acknowledged, with or without queue entries.
    let q = Enqueue {
        integrations: vec![IntegrationId(uuid::Uuid::from_u128(9))],
        event: data.to_vec(),
    };
    for queue in [None, Some((42, &q))] {
        let rec = wal::encode_record(&op, queue);
        let (back, back_q) = wal::decode_record(&rec[8..]).expect("an encoded record decodes");
        assert_eq!(back, op);
        assert_eq!(back_q.as_ref(), queue.map(|(s, q)| (s, q.clone())).as_ref());
        let plain = wal::scan(&rec);
        assert_eq!(
            (plain.records, plain.damaged, plain.torn_tail),
            (vec![(8, rec.len() - 8)], vec![], None)
        );
        // The same record in a segment with a salt, as the writer appends it.
        let seg = wal::segment([3; 16], &rec);
        let salted = wal::scan(&seg);
        let body = seg.len() - rec.len();
        assert_eq!(
            (salted.records, salted.damaged, salted.torn_tail),
            (vec![(body + 8, rec.len() - 8)], vec![], None)
        );
    }
}

/// Client attributes, attribute requests, and operator-set attributes.
pub fn attributes(data: &[u8]) {
    if let Ok(values) = protocol::parse_attributes(data) {
        check_values(&values);
    }
    let req = protocol::parse_attribute_request(data);
    for keys in [&req.client, &req.shared].into_iter().flatten() {
        assert!(!keys.is_empty(), "an empty list is None");
        for k in keys {
            assert!(!k.is_empty() && !k.contains(',') && k.trim() == k, "{k:?}");
        }
    }
    if let Ok(Json::Object(body)) = serde_json::from_slice::<Json>(data)
        && let Ok(values) = crate::devices::attributes::parse_body(body)
    {
        check_values(&values);
        assert!(values.iter().all(|(k, _)| !k.contains(',')));
    }
}

/// Checks parsed values: keys within bounds, numbers finite, and each value the same after the
/// store's encoding and its JSON form after a second parse.
fn check_values(values: &[(String, Value)]) {
    for (k, v) in values {
        assert!(!k.is_empty() && k.len() <= protocol::MAX_KEY_LEN, "{k:?}");
        if let Value::Double(d) = v {
            assert!(d.is_finite(), "{d}");
        }
        let mut enc = Vec::new();
        codec::encode_value(&mut enc, v);
        assert_eq!(
            &codec::decode_value(&enc).expect("an encoded value decodes"),
            v
        );
    }
}

/// Condition reports, as a device sends them.
pub fn conditions(data: &[u8]) {
    let Ok(reports) = crate::conditions::parse_reports(data) else {
        return;
    };
    assert!((1..=crate::conditions::MAX_REPORTS).contains(&reports.len()));
    for r in &reports {
        assert!(!r.name.is_empty() && r.name.len() <= crate::conditions::MAX_NAME_LEN);
        if r.action == crate::conditions::Action::Open {
            assert!(r.severity.is_some());
        }
        if let Some(d) = &r.details {
            assert!(d.is_object());
            let size = serde_json::to_vec(d).expect("JSON serializes").len();
            assert!(size <= crate::conditions::MAX_DETAILS_BYTES);
            // The details are stored as JSON and read back.
            assert_eq!(&json_round_trip(d), d);
        }
    }
}

/// A client RPC request Corral answers itself, and a device's reply to a job.
pub fn rpc(data: &[u8]) {
    let answer = crate::devices::rpc::client_rpc(&Config::default(), data);
    assert!(
        answer.get("error").is_some_and(Json::is_string) || answer.get("maxPayloadSize").is_some(),
        "{answer}"
    );
    let result = crate::jobs::reply_result(data);
    if let Ok(j) = serde_json::from_slice::<Json>(data) {
        assert_eq!(result, j);
    } else {
        assert!(result.is_string());
    }
    // The result is stored with the job and read back.
    assert_eq!(json_round_trip(&result), result);
}

/// JSON as the store writes and reads it back.
fn json_round_trip(j: &Json) -> Json {
    codec::decode_json("fuzz", &codec::encode_json(j)).expect("stored JSON reads back")
}

/// A WAL record payload, as replay reads it from disk.
pub fn wal_record(data: &[u8]) {
    let Some((op, queue)) = wal::decode_record(data) else {
        return;
    };
    // Decoding is lenient in places (a boolean is any byte), so the test is that what it
    // decodes encodes to a canonical record that decodes to the same encoding again.
    let first = wal::encode_record(&op, queue.as_ref().map(|(s, q)| (*s, q)));
    let (op2, queue2) = wal::decode_record(&first[8..]).expect("an encoded record decodes");
    let second = wal::encode_record(&op2, queue2.as_ref().map(|(s, q)| (*s, q)));
    assert_eq!(first, second);
    assert_eq!(queue, queue2);
}

/// A WAL segment, as replay scans it: the records found and the stretches skipped cover the
/// segment in order, and every record found decodes.
pub fn wal_segment(data: &[u8]) {
    let wal::Scanned {
        records,
        damaged,
        torn_tail: torn,
        body,
    } = wal::scan(data);
    let mut spans: Vec<(usize, usize, bool)> = records
        .iter()
        .map(|&(at, len)| (at - 8, len + 8, true))
        .chain(damaged.iter().map(|&(at, len)| (at, len, false)))
        .collect();
    spans.sort();
    let mut pos = body;
    for (at, len, is_record) in spans {
        assert_eq!(at, pos, "spans cover the segment in order");
        assert!(len > 0);
        if is_record {
            assert!(wal::decodes(&data[at + 8..at + len]));
        }
        pos = at + len;
    }
    assert_eq!(torn.unwrap_or(data.len()), pos);
    assert!(torn.is_none_or(|t| t < data.len()));
    if let Some(&(last, _)) = damaged.last() {
        assert!(
            records.last().is_some_and(|&(at, _)| at > last),
            "damage is damage only when records follow it"
        );
    }
}

/// The store's key and value codecs: timestamps, length-prefixed strings, values.
pub fn codec(data: &[u8]) {
    if let Some(ts) = codec::ts_from(data) {
        assert_eq!(codec::ts_bytes(ts).as_slice(), data);
    }
    if let (Some(a), Some(b)) = (
        data.get(..8).and_then(codec::ts_from),
        data.get(8..16).and_then(codec::ts_from),
    ) {
        assert_eq!(a.cmp(&b), codec::ts_bytes(a).cmp(&codec::ts_bytes(b)));
        assert_eq!(codec::ts_from(&codec::ts_bytes(a)), Some(a));
    }
    // A run of length-prefixed strings, re-encoded byte for byte.
    let mut pos = 0;
    let mut out = Vec::new();
    while let Some(s) = codec::read_str(data, &mut pos) {
        codec::push_str(&mut out, s);
        assert_eq!(out.as_slice(), &data[..pos]);
    }
    if let Ok(v) = codec::decode_value(data) {
        let mut first = Vec::new();
        codec::encode_value(&mut first, &v);
        let mut second = Vec::new();
        codec::encode_value(
            &mut second,
            &codec::decode_value(&first).expect("an encoded value decodes"),
        );
        assert_eq!(first, second);
    }
    let s = Value::Str(String::from_utf8_lossy(data).into_owned());
    let mut enc = Vec::new();
    codec::encode_value(&mut enc, &s);
    assert_eq!(codec::decode_value(&enc).expect("decodes"), s);
}

/// A configuration file, then `CORRAL_*` variables (`NAME=value` lines) after a NUL byte.
pub fn config(data: &[u8]) {
    let (text, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (Ok(text), Ok(env)) = (std::str::from_utf8(text), std::str::from_utf8(env)) else {
        return;
    };
    // `admin_key_file` names a file that loading reads; a fuzzer naming /dev/zero would only
    // measure the machine's memory.
    if text.contains("key_file") || env.to_ascii_lowercase().contains("key_file") {
        return;
    }
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let Ok(c) = Config::parse(text, "fuzz.toml", env) else {
        return;
    };
    // What `corral config check --print` shows loads back as the same configuration.
    let printed = toml::to_string_pretty(&c).expect("a configuration serializes");
    let back = Config::parse(&printed, "printed", Vec::new())
        .unwrap_or_else(|e| panic!("printed configuration refused: {e}\n{printed}"));
    assert_eq!(back, c, "{printed}");
}

/// A certificate as an operator or a provisioning device gives it (PEM or base64 text), a
/// public key, and a DER certificate as a TLS handshake presents it.
pub fn certificate(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(der) = pki::parse_cert_text(text) {
            check_cert(&der);
        }
        if let Ok(h) = pki::spki_sha256_of_pem(text) {
            assert!(h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
    let der = CertificateDer::from(data);
    if pki::describe_cert(&der, crate::model::CertOrigin::Registered).is_ok() {
        check_cert(&der);
    }
    let _ = pki::common_name(&der);
    let _ = pki::chains_to(std::slice::from_ref(&der), &der);
}

/// A certificate that parsed: described, and the same after its PEM form is parsed again.
fn check_cert(der: &CertificateDer<'_>) {
    let info = pki::describe_cert(der, crate::model::CertOrigin::Registered)
        .expect("a parsed certificate is described");
    let again = pki::parse_cert_text(&info.certificate_pem).expect("its PEM parses");
    assert_eq!(again.as_ref(), der.as_ref());
    let _ = pki::common_name(der);
    let _ = matches!(pki::check_ca_cert(der), Err(CertError::NotCa));
}

/// A CA for `csr`, created in `dir` (which must be writable and is left for the caller).
pub fn test_pki(dir: &Path) -> Pki {
    let cfg = crate::config::PkiConfig::default();
    Pki::load_or_init(dir, &cfg)
        .expect("a CA in a writable directory")
        .0
}

/// A device's certificate signing request (PEM): what Corral signs names the device and is a
/// client certificate under the CA, whatever the request asked for.
pub fn csr(pki: &Pki, data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(pem) = pki.sign_csr(text, "fuzz-device", 1) else {
        return;
    };
    let der = pki::parse_cert_text(&pem).expect("a signed certificate parses");
    assert_eq!(pki::common_name(&der).as_deref(), Some("fuzz-device"));
    assert_eq!(pki::check_ca_cert(&der), Err(CertError::NotCa));
    let ca = pki::parse_cert_text(pki.ca_pem()).expect("the CA parses");
    assert!(pki::chains_to(&[der], &ca));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device can send a whole, checksummed WAL record as a string value (the fuzzer's
    /// finding). When the record carrying it is the one a crash cuts short (the normal torn
    /// tail), replay's resynchronisation looks for records inside it. In a segment without a
    /// salt it found the forgery: damage followed by a record, so a refused start, and with
    /// `--accept-data-loss` the forgery replayed. The segment's salt makes it a torn tail.
    #[test]
    fn a_record_inside_a_torn_record_is_a_torn_tail_not_damage() {
        let forged = (0u32..)
            .map(|i| {
                let op = PointsOp {
                    device: DeviceId(uuid::Uuid::from_bytes(*b"AAAAAAAAAAAAAAAA")),
                    tag: "default".into(),
                    points: vec![(1, vec![(format!("k{i}"), Value::Long(1))])],
                };
                wal::encode_record(&op, None)
            })
            .find_map(|rec| String::from_utf8(rec).ok())
            .expect("a record that is valid UTF-8 (its checksum bytes all ASCII)");
        let carrier = PointsOp {
            device: DeviceId(uuid::Uuid::from_u128(7)),
            tag: "default".into(),
            points: vec![(
                2,
                vec![
                    ("s".into(), Value::Str(forged)),
                    ("z".into(), Value::Str("more data".into())),
                ],
            )],
        };
        let segment = wal::segment(rand::random(), &wal::encode_record(&carrier, None));
        let torn = &segment[..segment.len() - 3];
        let s = wal::scan(torn);
        assert_eq!(
            (s.records, s.damaged, s.torn_tail),
            (vec![], vec![], Some(s.body)),
            "a crash cut the only record short"
        );
    }
}
