//! Byte layouts of keys and values. Keys are built so that sled's lexicographic order is the
//! order we scan in: ids are big-endian UUIDv7 (creation order), timestamps are sign-flipped
//! big-endian so negative times sort first.

use serde::{Serialize, de::DeserializeOwned};

use super::{Result, StoreError};
use crate::model::{Millis, Value};

pub fn encode_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing our own plain structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

pub fn decode_json<T: DeserializeOwned>(tree: &'static str, b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt {
        tree,
        detail: e.to_string(),
    })
}

/// `a ‖ b`, for composite index keys of fixed-width parts.
pub fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// Timestamps as order-preserving bytes.
pub fn ts_bytes(ts: Millis) -> [u8; 8] {
    ((ts as u64) ^ (1u64 << 63)).to_be_bytes()
}

pub fn ts_from(b: &[u8]) -> Option<Millis> {
    let arr: [u8; 8] = b.try_into().ok()?;
    Some((u64::from_be_bytes(arr) ^ (1u64 << 63)) as i64)
}

/// Appends a length-prefixed string (at most 255 bytes; callers validate lengths).
pub fn push_str(k: &mut Vec<u8>, s: &str) {
    let len = s.len().min(255);
    k.push(len as u8);
    k.extend_from_slice(&s.as_bytes()[..len]);
}

/// Reads a length-prefixed string at `*pos`.
pub fn read_str<'a>(b: &'a [u8], pos: &mut usize) -> Option<&'a str> {
    let len = *b.get(*pos)? as usize;
    let s = b.get(*pos + 1..*pos + 1 + len)?;
    *pos += 1 + len;
    std::str::from_utf8(s).ok()
}

const V_BOOL: u8 = 0;
const V_LONG: u8 = 1;
const V_DOUBLE: u8 = 2;
const V_STR: u8 = 3;
const V_JSON: u8 = 4;

/// Compact value encoding: a type byte, then the payload.
pub fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(b) => {
            out.push(V_BOOL);
            out.push(u8::from(*b));
        }
        Value::Long(i) => {
            out.push(V_LONG);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Value::Double(d) => {
            out.push(V_DOUBLE);
            out.extend_from_slice(&d.to_be_bytes());
        }
        Value::Str(s) => {
            out.push(V_STR);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Json(j) => {
            out.push(V_JSON);
            out.extend_from_slice(&encode_json(j));
        }
    }
}

pub fn decode_value(b: &[u8]) -> Result<Value> {
    let bad = |d: &str| StoreError::Corrupt {
        tree: "ts",
        detail: d.to_string(),
    };
    let (&t, rest) = b.split_first().ok_or_else(|| bad("empty value"))?;
    let eight = |r: &[u8]| -> Result<[u8; 8]> { r.try_into().map_err(|_| bad("bad number width")) };
    Ok(match t {
        V_BOOL => Value::Bool(rest.first() == Some(&1)),
        V_LONG => Value::Long(i64::from_be_bytes(eight(rest)?)),
        V_DOUBLE => Value::Double(f64::from_be_bytes(eight(rest)?)),
        V_STR => Value::Str(String::from_utf8(rest.to_vec()).map_err(|_| bad("bad utf-8"))?),
        V_JSON => Value::Json(decode_json("ts", rest)?),
        _ => return Err(bad("unknown value type")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_sort_as_numbers() {
        let mut v = vec![5i64, -3, 0, i64::MAX, i64::MIN, 1_700_000_000_000];
        let mut enc: Vec<_> = v.iter().map(|t| ts_bytes(*t)).collect();
        enc.sort();
        v.sort();
        let dec: Vec<_> = enc.iter().map(|b| ts_from(b).expect("8 bytes")).collect();
        assert_eq!(dec, v);
    }

    #[test]
    fn values_round_trip() {
        for v in [
            Value::Bool(true),
            Value::Long(-42),
            Value::Double(21.5),
            Value::Str("héllo".into()),
            Value::Json(serde_json::json!({"a": [1, 2]})),
        ] {
            let mut b = Vec::new();
            encode_value(&mut b, &v);
            assert_eq!(decode_value(&b).expect("decodes"), v);
        }
        assert!(decode_value(&[9]).is_err());
        assert!(decode_value(&[]).is_err());
    }

    /// Found by fuzzing: JSON values are stored as text, and serde_json's default float parser
    /// read some numbers back one unit in the last place away from what was stored.
    #[test]
    fn json_numbers_read_back_exactly() {
        for text in ["-1.81996730402717e-179", "-1.603964615428183e143"] {
            let n: f64 = text.parse().expect("a number");
            let v = Value::Json(serde_json::json!({ "n": n }));
            let mut b = Vec::new();
            encode_value(&mut b, &v);
            assert_eq!(decode_value(&b).expect("decodes"), v, "{text}");
        }
    }

    #[test]
    fn strings_round_trip_with_length_prefix() {
        let mut k = Vec::new();
        push_str(&mut k, "default");
        push_str(&mut k, "temperature");
        let mut pos = 0;
        assert_eq!(read_str(&k, &mut pos), Some("default"));
        assert_eq!(read_str(&k, &mut pos), Some("temperature"));
        assert_eq!(pos, k.len());
    }
}
