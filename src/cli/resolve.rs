//! What a name on the command line means. Every reference to a workspace, fleet, device,
//! integration, user, schedule, open condition, manufacturer CA or API key is an id or an exact
//! (case-insensitive) name, resolved here against the REST API; and the names that tables show
//! in place of parent ids are fetched here, once per listing. Commands own their arguments and
//! their output; this module owns the lookups.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde_json::Value;

use super::client::{ApiClient, ServerError};

/// How a kind's listing endpoint answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listing {
    /// `{"items": [...], "next_cursor": ...}` with a `name` filter.
    Paged,
    /// `{"items": [...]}`, everything at once.
    Items,
    /// A bare array, everything at once.
    Array,
}

/// A kind of object the CLI can name, and where the API lists it.
pub struct Kind {
    noun: &'static str,
    list: String,
    /// `GET {list}/{id}` exists.
    by_id: bool,
    name_field: &'static str,
    listing: Listing,
    /// Query parameters that narrow the listing (a workspace, a device, a state).
    scope: Vec<(&'static str, String)>,
    /// Said when a name matches several objects.
    hint: &'static str,
}

impl Kind {
    fn new(noun: &'static str, list: impl Into<String>, listing: Listing) -> Self {
        Self {
            noun,
            list: list.into(),
            by_id: true,
            name_field: "name",
            listing,
            scope: Vec::new(),
            hint: "use the id",
        }
    }

    pub fn workspace() -> Self {
        Self::new("workspace", "/workspaces", Listing::Paged)
    }

    /// Fleet names are unique within a workspace: narrow with `within("workspace_id", ..)`.
    pub fn fleet() -> Self {
        Self {
            hint: "use the id (fleet names are unique only within a workspace)",
            ..Self::new("fleet", "/fleets", Listing::Paged)
        }
    }

    /// Device names are unique within a workspace: narrow with `within("workspace_id", ..)`.
    pub fn device() -> Self {
        Self {
            hint: "use the id (device names are unique only within a workspace)",
            ..Self::new("device", "/devices", Listing::Paged)
        }
    }

    pub fn integration() -> Self {
        Self::new("integration", "/integrations", Listing::Items)
    }

    pub fn user() -> Self {
        Self {
            name_field: "username",
            ..Self::new("user", "/users", Listing::Array)
        }
    }

    pub fn schedule() -> Self {
        Self::new("schedule", "/schedules", Listing::Array)
    }

    /// Open conditions: a device has at most one open condition of a name, so a name with
    /// `within("device_id", ..)` is unique.
    pub fn open_condition() -> Self {
        Self {
            scope: vec![("state", "open".into())],
            hint: "give --device, or the id",
            ..Self::new("open condition", "/conditions", Listing::Paged)
        }
    }

    pub fn fleet_ca(fleet_id: &str) -> Self {
        Self {
            by_id: false,
            ..Self::new(
                "manufacturer CA",
                format!("/fleets/{fleet_id}/cas"),
                Listing::Array,
            )
        }
    }

    pub fn api_key(user_id: &str) -> Self {
        Self {
            by_id: false,
            ..Self::new(
                "API key",
                format!("/users/{user_id}/api-keys"),
                Listing::Array,
            )
        }
    }

    /// Only objects matching this query parameter (e.g. the fleets of one workspace).
    pub fn within(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.scope.push((key, value.into()));
        self
    }

    /// Every object of the kind (within its scope): one request, or one per 1000 for paged
    /// listings.
    async fn list_all(&self, c: &ApiClient, name: Option<&str>) -> anyhow::Result<Vec<Value>> {
        let mut query = self.scope.clone();
        if self.listing != Listing::Paged {
            let v: Value = c.get(&self.list, &query).await?;
            let items = if self.listing == Listing::Items {
                &v["items"]
            } else {
                &v
            };
            return Ok(items.as_array().cloned().unwrap_or_default());
        }
        if let Some(n) = name {
            query.push(("name", n.to_string()));
        }
        query.push(("limit", "1000".into()));
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = query.clone();
            if let Some(cur) = &cursor {
                q.push(("cursor", cur.clone()));
            }
            let mut page: Value = c.get(&self.list, &q).await?;
            if let Some(a) = page["items"].as_array_mut() {
                items.append(a);
            }
            match page["next_cursor"].as_str() {
                Some(cur) => cursor = Some(cur.to_string()),
                None => return Ok(items),
            }
        }
    }

    fn name_of<'a>(&self, v: &'a Value) -> Option<&'a str> {
        v[self.name_field].as_str()
    }
}

/// An object the user named: its id, and its name for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ref {
    pub id: String,
    pub name: String,
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

fn status(e: &anyhow::Error) -> Option<u16> {
    e.downcast_ref::<ServerError>().map(|s| s.status)
}

/// Deleted, or not the caller's to see.
fn is_missing(e: &anyhow::Error) -> bool {
    matches!(status(e), Some(404 | 403))
}

/// Resolves an id or an exact (case-insensitive) name of `kind`. An id is checked to exist;
/// a name must match exactly one object in the kind's scope.
pub async fn resolve(c: &ApiClient, kind: &Kind, s: &str) -> anyhow::Result<Ref> {
    let found = |v: &Value| Ref {
        id: v["id"].as_str().unwrap_or_default().to_string(),
        name: kind.name_of(v).unwrap_or(s).to_string(),
    };
    if uuid::Uuid::parse_str(s).is_ok() {
        if kind.by_id {
            return match c.get::<Value>(&format!("{}/{s}", kind.list), &[]).await {
                Ok(v) => Ok(found(&v)),
                // A caller may act on what they cannot read in full (a customer's workspace):
                // the id goes on as given, and the request it is for decides.
                Err(e) if status(&e) == Some(403) => Ok(Ref {
                    id: s.to_string(),
                    name: s.to_string(),
                }),
                Err(e) if status(&e) == Some(404) => {
                    anyhow::bail!("no {} with id {s}", kind.noun)
                }
                Err(e) => Err(e),
            };
        }
        let all = kind.list_all(c, None).await?;
        return match all.iter().find(|v| v["id"].as_str() == Some(s)) {
            Some(v) => Ok(found(v)),
            None => anyhow::bail!("no {} with id {s}", kind.noun),
        };
    }
    let all = kind.list_all(c, Some(s)).await?;
    let hits: Vec<&Value> = all
        .iter()
        .filter(|v| kind.name_of(v).is_some_and(|n| n.eq_ignore_ascii_case(s)))
        .collect();
    match hits.as_slice() {
        [one] => Ok(found(one)),
        [] => anyhow::bail!("no {} named \"{s}\"", kind.noun),
        many => {
            let ids: Vec<&str> = many.iter().filter_map(|v| v["id"].as_str()).collect();
            anyhow::bail!(
                "{} {}s are named \"{s}\" ({}); {}",
                many.len(),
                kind.noun,
                ids.join(", "),
                kind.hint
            )
        }
    }
}

/// As `resolve`, for an optional argument.
pub async fn resolve_opt(
    c: &ApiClient,
    kind: &Kind,
    s: Option<&str>,
) -> anyhow::Result<Option<Ref>> {
    match s {
        Some(s) => resolve(c, kind, s).await.map(Some),
        None => Ok(None),
    }
}

/// Up to this many distinct ids are fetched one by one (concurrently); more, and the whole
/// listing is read once instead.
const FEW: usize = 8;

/// Names by id for one table, fetched once: the parents (workspaces, fleets, devices) a
/// listing shows by name rather than by UUID.
#[derive(Default)]
pub struct Names(HashMap<String, String>);

impl Names {
    /// The names of `ids` of `kind`. An object the caller cannot see (deleted, or outside their
    /// grants) keeps its id.
    pub async fn of<I, S>(c: &ApiClient, kind: Kind, ids: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let wanted: HashSet<String> = ids.into_iter().map(Into::into).collect();
        let mut map = HashMap::new();
        if wanted.is_empty() {
            return Ok(Self(map));
        }
        if kind.by_id && wanted.len() <= FEW {
            let list = kind.list.as_str();
            let gets = wanted
                .iter()
                .map(|id| async move { (id, c.get::<Value>(&format!("{list}/{id}"), &[]).await) });
            for (id, r) in futures_util::future::join_all(gets).await {
                match r {
                    Ok(v) => {
                        if let Some(n) = kind.name_of(&v) {
                            map.insert(id.clone(), n.to_string());
                        }
                    }
                    Err(e) if is_missing(&e) => {}
                    Err(e) => return Err(e),
                }
            }
        } else {
            for v in kind.list_all(c, None).await? {
                if let (Some(id), Some(n)) = (v["id"].as_str(), kind.name_of(&v))
                    && wanted.contains(id)
                {
                    map.insert(id.to_string(), n.to_string());
                }
            }
        }
        Ok(Self(map))
    }

    /// `name (id)`, for a parent in a `show` block; the id alone when it has no name here.
    pub fn with_id(&self, id: impl ToString) -> String {
        let id = id.to_string();
        match self.0.get(&id) {
            Some(name) => format!("{name} ({id})"),
            None => id,
        }
    }

    /// The name of `id`, or the id itself when it has none here.
    pub fn get(&self, id: impl AsRef<str>) -> String {
        let id = id.as_ref();
        self.0.get(id).cloned().unwrap_or_else(|| id.to_string())
    }
}
