//! The one rule for the short texts people give objects (workspace, fleet, device,
//! integration and schedule names, job methods): surrounding whitespace is trimmed, what is
//! left is 1 to N characters with no control characters. Also the JSON Schema pattern of the
//! rule, so the API document states exactly what the server accepts (a test holds the two
//! together).

/// Longest name, in characters.
pub const MAX_NAME: usize = 128;
/// Longest job method, in characters.
pub const MAX_METHOD: usize = 256;

/// The pattern of a name (`MAX_NAME`) in the API document: optional whitespace (the set Rust's
/// `trim` removes), then a first and last character that are neither whitespace nor control,
/// and up to 126 non-control characters between. ECMA-262, Python and Rust regex alike.
pub const NAME_PATTERN: &str = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,126}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$";

/// The same for a job method (`MAX_METHOD`).
pub const METHOD_PATTERN: &str = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,254}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$";

/// `s` trimmed, when it is 1 to `max` characters with no control character; otherwise the
/// reason, for the caller's error.
pub fn check(s: &str, max: usize) -> Result<String, String> {
    let n = s.trim();
    if n.is_empty() || n.chars().count() > max || n.chars().any(char::is_control) {
        return Err(format!("must be 1 to {max} printable characters"));
    }
    Ok(n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &[&str] = &[
        "",
        " ",
        "\t\n",
        "a",
        " a ",
        "\u{3000}a\u{a0}",
        "a b",
        "a\u{a0}b",
        "a\tb",
        "a\u{85}b",
        "\u{85}a",
        "a\u{7f}",
        "\u{0}",
        "thermo-1",
        "Ünïcødé 名前",
        "\u{feff}",
        "a\u{1c}",
        "\u{1c}a",
    ];

    fn agree(pattern: &str, max: usize) {
        let re = regex::Regex::new(pattern).expect("the pattern compiles");
        let long = |n: usize| "x".repeat(n);
        let padded = |n: usize| format!("  {}\t", "y".repeat(n));
        let mut all: Vec<String> = SAMPLES.iter().map(|s| s.to_string()).collect();
        all.extend([long(max), long(max + 1), padded(max), padded(max + 1)]);
        all.push(format!("a{}b", " ".repeat(max - 2)));
        all.push(format!("a{}b", " ".repeat(max - 1)));
        for s in &all {
            assert_eq!(
                re.is_match(s),
                check(s, max).is_ok(),
                "pattern and check disagree on {s:?}"
            );
        }
    }

    #[test]
    fn the_patterns_accept_exactly_what_check_accepts() {
        agree(NAME_PATTERN, MAX_NAME);
        agree(METHOD_PATTERN, MAX_METHOD);
    }
}
