//! The readable API reference at `/api/docs`: one HTML page rendered on the server from the
//! same OpenAPI document `/api/v1/openapi.json` serves, so the two never disagree. No script
//! and no remote asset (the page works offline and under the UI's strict CSP); its stylesheet
//! is served beside it.

use std::fmt::Write;

use utoipa::openapi::path::{Operation, Parameter, ParameterIn};
use utoipa::openapi::schema::{AdditionalProperties, ArrayItems, Schema, SchemaType, Type};
use utoipa::openapi::{OpenApi, RefOr};

/// The page's stylesheet (`/api/docs/style.css`).
pub const STYLE: &str = include_str!("reference.css");

/// The whole reference page for `doc`.
pub fn render(doc: &OpenApi) -> String {
    let mut h = String::with_capacity(256 * 1024);
    let title = esc(&doc.info.title);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><link rel=\"stylesheet\" href=\"/api/docs/style.css\"></head>\
         <body><nav><h1>{title}</h1><p class=\"version\">version {}</p>\
         <p><a href=\"/api/v1/openapi.json\">openapi.json</a></p><ul>",
        esc(&doc.info.version)
    );
    let tags = tags(doc);
    for (name, _) in &tags {
        let _ = write!(h, "<li><a href=\"#tag-{0}\">{0}</a></li>", esc(name));
    }
    h.push_str("<li><a href=\"#schemas\">schemas</a></li></ul></nav><main>");
    let _ = write!(h, "<h1>{title}</h1>");
    if let Some(d) = &doc.info.description {
        h.push_str(&prose(d));
    }
    if let Some(s) = doc.servers.as_ref().and_then(|s| s.first()) {
        let _ = write!(
            h,
            "<p>Every path below is relative to <code>{}</code>.</p>",
            esc(&s.url)
        );
    }
    for (name, description) in &tags {
        let _ = write!(h, "<section id=\"tag-{0}\"><h2>{0}</h2>", esc(name));
        if let Some(d) = description {
            h.push_str(&prose(d));
        }
        for (path, method, op) in operations(doc) {
            if op.tags.as_ref().and_then(|t| t.first()) == Some(name) {
                operation(&mut h, path, method, op);
            }
        }
        h.push_str("</section>");
    }
    h.push_str("<section id=\"schemas\"><h2>schemas</h2>");
    if let Some(c) = &doc.components {
        for (name, s) in &c.schemas {
            let _ = write!(h, "<article id=\"schema-{0}\"><h3>{0}</h3>", esc(name));
            schema_body(&mut h, s);
            h.push_str("</article>");
        }
    }
    h.push_str("</section></main></body></html>");
    h
}

/// The document's tags in its order, then any tag operations use that it does not list.
fn tags(doc: &OpenApi) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = doc
        .tags
        .iter()
        .flatten()
        .map(|t| (t.name.clone(), t.description.clone()))
        .collect();
    for (_, _, op) in operations(doc) {
        let t = op
            .tags
            .as_ref()
            .and_then(|t| t.first())
            .cloned()
            .unwrap_or_else(|| "other".into());
        if !out.iter().any(|(n, _)| *n == t) {
            out.push((t, None));
        }
    }
    out
}

fn operations(doc: &OpenApi) -> Vec<(&str, &'static str, &Operation)> {
    let mut v = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ] {
            if let Some(op) = op {
                v.push((path.as_str(), method, op));
            }
        }
    }
    v
}

fn operation(h: &mut String, path: &str, method: &str, op: &Operation) {
    let anchor = format!("{method}-{path}")
        .replace(['/', '{', '}'], "-")
        .to_lowercase();
    let _ = write!(
        h,
        "<article class=\"op\" id=\"{}\"><h3><span class=\"method {}\">{method}</span> \
         <code>{}</code></h3>",
        esc(&anchor),
        method.to_lowercase(),
        esc(path)
    );
    if let Some(s) = &op.summary {
        let _ = write!(h, "<p class=\"summary\">{}</p>", inline(s));
    }
    if let Some(d) = &op.description {
        h.push_str(&prose(d));
    }
    let public = op.security.as_ref().is_some_and(|reqs| {
        reqs.iter()
            .any(|r| serde_json::to_value(r).is_ok_and(|v| v == serde_json::json!({})))
    });
    h.push_str(if public {
        "<p class=\"auth\">No API key: public.</p>"
    } else {
        "<p class=\"auth\">Needs an API key (<code>Authorization: Bearer</code>) or a session.</p>"
    });
    let params: Vec<&Parameter> = op.parameters.iter().flatten().collect();
    if !params.is_empty() {
        h.push_str(
            "<table><thead><tr><th>parameter</th><th>in</th><th>type</th><th>description</th>\
             </tr></thead><tbody>",
        );
        for p in params {
            let place = match p.parameter_in {
                ParameterIn::Path => "path",
                ParameterIn::Query => "query",
                ParameterIn::Header => "header",
                ParameterIn::Cookie => "cookie",
            };
            let required = matches!(p.required, utoipa::openapi::Required::True);
            let _ = write!(
                h,
                "<tr><td><code>{}</code>{}</td><td>{place}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.name),
                if required { " <em>required</em>" } else { "" },
                p.schema.as_ref().map(type_of).unwrap_or_default(),
                p.description.as_deref().map(inline).unwrap_or_default()
            );
        }
        h.push_str("</tbody></table>");
    }
    if let Some(b) = &op.request_body {
        h.push_str("<p class=\"body\">Body: ");
        for (ct, c) in &b.content {
            let _ = write!(
                h,
                "<code>{}</code> {} ",
                esc(ct),
                c.schema.as_ref().map(type_of).unwrap_or_default()
            );
        }
        if let Some(d) = &b.description {
            h.push_str(&inline(d));
        }
        h.push_str("</p>");
    }
    h.push_str("<dl class=\"responses\">");
    for (status, r) in &op.responses.responses {
        let (description, schema) = match r {
            RefOr::T(r) => (
                r.description.as_str(),
                r.content
                    .values()
                    .filter_map(|c| c.schema.as_ref())
                    .map(type_of)
                    .collect::<Vec<_>>()
                    .join(" or "),
            ),
            RefOr::Ref(r) => ("", link(&r.ref_location)),
        };
        let _ = write!(
            h,
            "<dt>{}</dt><dd>{} {}</dd>",
            esc(status),
            inline(description),
            schema
        );
    }
    h.push_str("</dl></article>");
}

fn schema_body(h: &mut String, s: &RefOr<Schema>) {
    let RefOr::T(schema) = s else {
        let _ = write!(h, "<p>{}</p>", type_of(s));
        return;
    };
    if let Some(d) = description(schema) {
        h.push_str(&prose(d));
    }
    match schema {
        Schema::Object(o) if !o.properties.is_empty() => {
            h.push_str(
                "<table><thead><tr><th>field</th><th>type</th><th>description</th></tr></thead>\
                 <tbody>",
            );
            for (name, p) in &o.properties {
                let required = o.required.iter().any(|r| r == name);
                let _ = write!(
                    h,
                    "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(name),
                    if required { " <em>required</em>" } else { "" },
                    type_of(p),
                    match p {
                        RefOr::T(s) => description(s).map(inline).unwrap_or_default(),
                        RefOr::Ref(r) => inline(&r.description),
                    }
                );
            }
            h.push_str("</tbody></table>");
        }
        _ => {
            let _ = write!(h, "<p>{}</p>", type_of(s));
        }
    }
}

fn description(s: &Schema) -> Option<&str> {
    match s {
        Schema::Object(o) => o.description.as_deref(),
        Schema::Array(a) => a.description.as_deref(),
        Schema::OneOf(x) => x.description.as_deref(),
        Schema::AllOf(x) => x.description.as_deref(),
        Schema::AnyOf(x) => x.description.as_deref(),
        _ => None,
    }
    .filter(|d| !d.is_empty())
}

/// A schema in one line: its type, format and constraints, or a link to a named schema.
fn type_of(s: &RefOr<Schema>) -> String {
    let schema = match s {
        RefOr::Ref(r) => return link(&r.ref_location),
        RefOr::T(s) => s,
    };
    match schema {
        Schema::Object(o) => {
            let mut t = match &o.schema_type {
                SchemaType::Type(t) => type_name(t).to_string(),
                SchemaType::Array(ts) => ts.iter().map(type_name).collect::<Vec<_>>().join(" | "),
                SchemaType::AnyValue => "any JSON".to_string(),
            };
            if let Some(f) = &o.format {
                let f = serde_json::to_value(f).ok();
                if let Some(f) = f.as_ref().and_then(|v| v.as_str()) {
                    let _ = write!(t, " ({})", esc(f));
                }
            }
            let mut limits = Vec::new();
            if let Some(e) = &o.enum_values {
                let names: Vec<String> = e.iter().map(|v| esc(&v.to_string())).collect();
                limits.push(format!("one of {}", names.join(", ")));
            }
            let num = |n: &utoipa::Number| {
                serde_json::to_value(n)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            };
            match (&o.minimum, &o.maximum) {
                (Some(lo), Some(hi)) => limits.push(format!("{} to {}", num(lo), num(hi))),
                (Some(lo), None) => limits.push(format!("at least {}", num(lo))),
                (None, Some(hi)) => limits.push(format!("at most {}", num(hi))),
                (None, None) => {}
            }
            match (o.min_length, o.max_length) {
                (Some(lo), Some(hi)) => limits.push(format!("{lo} to {hi} characters")),
                (Some(lo), None) => limits.push(format!("at least {lo} characters")),
                (None, Some(hi)) => limits.push(format!("at most {hi} characters")),
                (None, None) => {}
            }
            if let Some(p) = &o.pattern {
                limits.push(format!(
                    "matching <code class=\"pattern\">{}</code>",
                    esc(p)
                ));
            }
            if let Some(AdditionalProperties::RefOr(v)) = o.additional_properties.as_deref() {
                limits.push(format!("values: {}", type_of(v)));
            }
            if limits.is_empty() {
                t
            } else {
                format!("{t}; {}", limits.join("; "))
            }
        }
        Schema::Array(a) => match &a.items {
            ArrayItems::RefOrSchema(items) => format!("array of {}", type_of(items)),
            ArrayItems::False => "array".into(),
        },
        Schema::OneOf(x) => x.items.iter().map(type_of).collect::<Vec<_>>().join(" or "),
        Schema::AnyOf(x) => x.items.iter().map(type_of).collect::<Vec<_>>().join(" or "),
        Schema::AllOf(x) => x
            .items
            .iter()
            .map(type_of)
            .collect::<Vec<_>>()
            .join(" and "),
        _ => "any JSON".into(),
    }
}

fn type_name(t: &Type) -> &'static str {
    match t {
        Type::Object => "object",
        Type::String => "string",
        Type::Integer => "integer",
        Type::Number => "number",
        Type::Boolean => "boolean",
        Type::Array => "array",
        Type::Null => "null",
    }
}

fn link(reference: &str) -> String {
    let name = reference.rsplit('/').next().unwrap_or(reference);
    format!("<a href=\"#schema-{0}\">{0}</a>", esc(name))
}

/// Paragraphs of the document's Markdown-ish prose: blank lines split paragraphs; backticks
/// and double asterisks become code and bold.
fn prose(s: &str) -> String {
    s.split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .map(|p| format!("<p>{}</p>", inline(p)))
        .collect()
}

/// One line of prose: escaped, with `code` and **bold** spans.
fn inline(s: &str) -> String {
    let escaped = esc(s);
    let mut out = String::with_capacity(escaped.len());
    let mut code = false;
    for (i, part) in escaped.split('`').enumerate() {
        if i > 0 {
            out.push_str(if code { "</code>" } else { "<code>" });
            code = !code;
        }
        if code {
            out.push_str(part);
        } else {
            let mut bold = false;
            for (j, piece) in part.split("**").enumerate() {
                if j > 0 {
                    out.push_str(if bold { "</strong>" } else { "<strong>" });
                    bold = !bold;
                }
                out.push_str(piece);
            }
            if bold {
                out.push_str("</strong>");
            }
        }
    }
    if code {
        out.push_str("</code>");
    }
    out
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prose_escapes_and_marks_up() {
        assert_eq!(
            inline("a `<b>` and **c** & d"),
            "a <code>&lt;b&gt;</code> and <strong>c</strong> &amp; d"
        );
        assert_eq!(inline("unclosed `x"), "unclosed <code>x</code>");
        assert_eq!(prose("one\n\ntwo"), "<p>one</p><p>two</p>");
    }

    #[test]
    fn every_operation_and_schema_is_on_the_page() {
        let doc = crate::api::openapi();
        let page = render(&doc);
        for (path, method, op) in operations(&doc) {
            assert!(
                page.contains(&format!("{method}</span> <code>{}</code>", esc(path))),
                "{method} {path}"
            );
            let summary = op.summary.as_deref().expect("summary");
            assert!(page.contains(&inline(summary)), "{summary}");
        }
        for name in doc.components.as_ref().expect("components").schemas.keys() {
            assert!(page.contains(&format!("id=\"schema-{name}\"")), "{name}");
        }
        assert!(!page.contains("<script"), "no script on the page");
    }
}
