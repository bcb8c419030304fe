//! CSV as devices are imported and exported (RFC 4180): reading records with the line each
//! starts on, so that an import can name the line of a bad row, and writing cells quoted
//! where needed and defused where a spreadsheet would run them as formulas.
//!
//! Hand-written rather than the `csv` crate on purpose: that reader accepts an unclosed quote
//! or text after a closing quote without a word (it is lenient by design), and an import must
//! name the line of such a row rather than store a device with a mangled name.

/// One record and the line (1-based) it starts on.
#[derive(Debug, PartialEq)]
pub struct Record {
    pub line: usize,
    pub fields: Vec<String>,
}

/// Why a CSV text cannot be read; `line` is where the problem starts.
#[derive(Debug, PartialEq)]
pub struct CsvError {
    pub line: usize,
    pub message: &'static str,
}

/// The records of `text`, blank lines skipped. Fields are separated by commas, records by
/// LF or CRLF; a field in double quotes may hold commas, line breaks and doubled quotes.
pub fn parse(text: &str) -> Result<Vec<Record>, CsvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text); // a spreadsheet's BOM
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    loop {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted_field = false;
        let mut at_end = true;
        while let Some(c) = chars.next() {
            at_end = false;
            match c {
                '"' if field.is_empty() && !quoted_field => {
                    quoted_field = true;
                    loop {
                        match chars.next() {
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                field.push('"');
                            }
                            Some('"') => break,
                            Some(c) => {
                                if c == '\n' {
                                    line += 1;
                                }
                                field.push(c);
                            }
                            None => {
                                return Err(CsvError {
                                    line: start,
                                    message: "a quoted field is not closed",
                                });
                            }
                        }
                    }
                    match chars.peek() {
                        None | Some(',' | '\n' | '\r') => {}
                        Some(_) => {
                            return Err(CsvError {
                                line,
                                message: "text after a closing quote (double a quote inside a quoted field)",
                            });
                        }
                    }
                }
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    quoted_field = false;
                }
                '\r' if chars.peek() == Some(&'\n') => {}
                '\n' => {
                    line += 1;
                    break;
                }
                c => field.push(c),
            }
        }
        if at_end {
            return Ok(out);
        }
        fields.push(field);
        let blank = fields.len() == 1 && fields[0].is_empty() && !quoted_field;
        if !blank {
            out.push(Record {
                line: start,
                fields,
            });
        }
    }
}

/// One CSV line (with its CRLF) of `cells`.
pub fn line<S: AsRef<str>>(cells: &[S]) -> String {
    let mut out = String::new();
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&cell(c.as_ref()));
    }
    out.push_str("\r\n");
    out
}

/// A cell as CSV: quoted when it holds a separator, a quote or a line break. Text a
/// spreadsheet would read as a formula (`=`, `+`, `-`, `@`, tab, CR at the start) gets a
/// leading `'`, so that opening an export never runs what a device named itself; numbers
/// such as `-3.5` are left alone.
pub fn cell(s: &str) -> String {
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s.parse::<f64>().is_err();
    let s = if formula {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<(usize, Vec<&'static str>)> {
        parse(text)
            .expect("parses")
            .into_iter()
            .map(|r| {
                (
                    r.line,
                    r.fields
                        .into_iter()
                        .map(|f| &*Box::leak(f.into_boxed_str()))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn reads_quotes_line_breaks_and_blank_lines_with_line_numbers() {
        let t = "name,label\r\na,\"x, \"\"y\"\"\"\n\n\"multi\nline\",z\nlast,\n";
        assert_eq!(
            fields(t),
            vec![
                (1, vec!["name", "label"]),
                (2, vec!["a", "x, \"y\""]),
                (4, vec!["multi\nline", "z"]),
                (6, vec!["last", ""]),
            ]
        );
        assert_eq!(fields("\u{feff}a,b"), vec![(1, vec!["a", "b"])]);
    }

    #[test]
    fn refuses_broken_quotes_with_the_line() {
        assert_eq!(parse("a\n\"open,b\n").expect_err("unclosed").line, 2);
        assert_eq!(
            parse("a\n\"x\"y,b\n").expect_err("text after a quote").line,
            2
        );
    }

    #[test]
    fn writes_quoted_and_defused_cells_that_read_back() {
        let cells = ["plain", "a,b", "say \"hi\"", "=cmd()", "-3.5", "two\nlines"];
        let text = line(&cells);
        assert_eq!(
            text,
            "plain,\"a,b\",\"say \"\"hi\"\"\",'=cmd(),-3.5,\"two\nlines\"\r\n"
        );
        let back = parse(&text).expect("parses");
        assert_eq!(back[0].fields[3], "'=cmd()");
        assert_eq!(back[0].fields[5], "two\nlines");
    }
}
