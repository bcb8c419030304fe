//! Reading a devices CSV into rows to create: the header's columns (`name`, `label`, `fleet`,
//! `token`, `client_id`, `username`, `password`, `certificate_pem`, `gateway`, `shared:KEY`,
//! `server:KEY`), each row's cells checked on their own, and every
//! problem kept with its line. Checks against the registry (fleets, names taken, the caller's
//! roles) are the import route's.

use serde_json::{Map, Value as Json};

use super::csv;

/// Most rows one import takes.
pub const MAX_ROWS: usize = 10_000;

/// A row's problem: the line it is on (the header is line 1), the column, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct RowError {
    pub line: usize,
    /// The column at fault (`name`, `fleet`, `shared:KEY`...), or `row` for the whole row.
    pub column: String,
    pub message: String,
}

/// One device to create, as the CSV gives it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportRow {
    pub line: usize,
    pub name: String,
    pub label: String,
    /// A fleet name or id; empty for the import's default fleet.
    pub fleet: String,
    /// An access token to give the device; a generated one when empty (and no other
    /// credential is given).
    pub token: String,
    /// MQTT basic credentials (`client_id`, `username`, `password`), when any cell is set.
    pub client_id: String,
    pub username: String,
    pub password: String,
    /// A device certificate to register (PEM, quoted in the CSV: it spans lines).
    pub certificate_pem: String,
    /// A gateway (`true`) or an ordinary device.
    pub gateway: bool,
    pub shared: Map<String, Json>,
    pub server: Map<String, Json>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Column {
    Name,
    Label,
    Fleet,
    Token,
    ClientId,
    Username,
    Password,
    Certificate,
    Gateway,
    Shared,
    Server,
}

/// The rows of a CSV text, and the problems found in the cells themselves. A header that
/// cannot be used (no `name`, an unknown or repeated column) is one error on line 1 and no
/// rows.
pub fn read(text: &str) -> (Vec<ImportRow>, Vec<RowError>) {
    let err = |line, column: &str, message: String| RowError {
        line,
        column: column.into(),
        message,
    };
    let records = match csv::parse(text) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), vec![err(e.line, "row", e.message.into())]),
    };
    let Some((header, rows)) = records.split_first() else {
        return (
            Vec::new(),
            vec![err(
                1,
                "row",
                "the CSV is empty: give a header line first".into(),
            )],
        );
    };
    let mut columns = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for h in &header.fields {
        let h = h.trim();
        let c = match h {
            "name" => Column::Name,
            "label" => Column::Label,
            "fleet" => Column::Fleet,
            "token" => Column::Token,
            "client_id" => Column::ClientId,
            "username" => Column::Username,
            "password" => Column::Password,
            "certificate_pem" => Column::Certificate,
            "gateway" => Column::Gateway,
            _ if h.starts_with("shared:") && h.len() > 7 => Column::Shared,
            _ if h.starts_with("server:") && h.len() > 7 => Column::Server,
            _ => {
                return (
                    Vec::new(),
                    vec![err(
                        header.line,
                        h,
                        format!(
                            "unknown column {h:?}: columns are name, label, fleet, token, client_id, username, password, certificate_pem, gateway, shared:KEY and server:KEY"
                        ),
                    )],
                );
            }
        };
        if !seen.insert(h.to_string()) {
            return (
                Vec::new(),
                vec![err(header.line, h, format!("column {h:?} is given twice"))],
            );
        }
        columns.push((c, h.split_once(':').map(|(_, k)| k.to_string())));
    }
    if !columns.iter().any(|(c, _)| *c == Column::Name) {
        return (
            Vec::new(),
            vec![err(
                header.line,
                "name",
                "the header has no name column".into(),
            )],
        );
    }
    if rows.len() > MAX_ROWS {
        return (
            Vec::new(),
            vec![err(
                rows[MAX_ROWS].line,
                "row",
                format!("at most {MAX_ROWS} devices per import"),
            )],
        );
    }
    let mut out = Vec::with_capacity(rows.len());
    let mut errors = Vec::new();
    for r in rows {
        if r.fields.len() != columns.len() {
            errors.push(err(
                r.line,
                "row",
                format!(
                    "{} cells where the header has {} columns",
                    r.fields.len(),
                    columns.len()
                ),
            ));
            continue;
        }
        let mut row = ImportRow {
            line: r.line,
            ..Default::default()
        };
        let mut bad = None;
        for ((c, key), raw) in columns.iter().zip(&r.fields) {
            let cell = raw.trim();
            match c {
                Column::ClientId => row.client_id = cell.to_string(),
                Column::Username => row.username = cell.to_string(),
                // A password is taken as given: spaces may be part of it.
                Column::Password => row.password = raw.clone(),
                Column::Certificate => row.certificate_pem = cell.to_string(),
                Column::Gateway => match cell {
                    "" | "false" => row.gateway = false,
                    "true" => row.gateway = true,
                    other => {
                        bad = Some(err(
                            r.line,
                            "gateway",
                            format!("{other:?}: true, false or empty"),
                        ))
                    }
                },
                Column::Name => row.name = cell.to_string(),
                Column::Label => row.label = cell.to_string(),
                Column::Fleet => row.fleet = cell.to_string(),
                Column::Token => row.token = cell.to_string(),
                Column::Shared | Column::Server if cell.is_empty() => {}
                Column::Shared => {
                    row.shared
                        .insert(key.clone().unwrap_or_default(), value(cell));
                }
                Column::Server => {
                    row.server
                        .insert(key.clone().unwrap_or_default(), value(cell));
                }
            }
        }
        if let Some(e) = bad {
            errors.push(e);
            continue;
        }
        if row.name.is_empty() {
            errors.push(err(r.line, "name", "a device needs a name".into()));
            continue;
        }
        let basic = !(row.client_id.is_empty() && row.username.is_empty());
        let given = [
            !row.token.is_empty(),
            basic,
            !row.certificate_pem.is_empty(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            errors.push(err(
                r.line,
                "row",
                "one credential per row: a token, MQTT basic (client_id, username, password) or a certificate".into(),
            ));
            continue;
        }
        if !row.password.is_empty() && !basic {
            errors.push(err(
                r.line,
                "password",
                "a password needs a client_id or a username".into(),
            ));
            continue;
        }
        out.push(row);
    }
    (out, errors)
}

/// A cell as an attribute value: `true`/`false`, a number, a JSON object or array, else the
/// text itself.
fn value(cell: &str) -> Json {
    match cell {
        "true" => return Json::Bool(true),
        "false" => return Json::Bool(false),
        _ => {}
    }
    if let Ok(i) = cell.parse::<i64>() {
        return Json::from(i);
    }
    if let Ok(f) = cell.parse::<f64>()
        && f.is_finite()
    {
        return Json::from(f);
    }
    if cell.starts_with(['{', '['])
        && let Ok(v) = serde_json::from_str::<Json>(cell)
    {
        return v;
    }
    Json::String(cell.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rows_with_typed_attributes_and_reports_bad_ones_by_line() {
        let text = "name,label,fleet,shared:interval,server:site\n\
                    a,roof,north,30,\"{\"\"x\"\":1}\"\n\
                    ,nameless,north,,\n\
                    b,short row\n\
                    c,,,true,plant 2\n";
        let (rows, errors) = read(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[0].shared["interval"], Json::from(30));
        assert_eq!(rows[0].server["site"], serde_json::json!({"x": 1}));
        assert_eq!(rows[1].shared["interval"], Json::Bool(true));
        assert_eq!(rows[1].server["site"], Json::from("plant 2"));
        let lines: Vec<(usize, &str)> =
            errors.iter().map(|e| (e.line, e.column.as_str())).collect();
        assert_eq!(lines, [(3, "name"), (4, "row")]);
    }

    #[test]
    fn refuses_a_header_it_cannot_use() {
        assert_eq!(read("label\nx\n").1[0].column, "name");
        assert!(
            read("name,colour\nx,red\n").1[0]
                .message
                .contains("unknown column")
        );
        assert!(read("name,name\n").1[0].message.contains("twice"));
        assert_eq!(read("").1[0].line, 1);
    }
}
