//! User commands over REST: `user create|list|show|update|delete` and per-user API keys
//! (`user key-create|key-list|key-delete`). Passwords are read from standard input, never
//! from the command line (where `ps` and shell history would see them).

use std::io::Read;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use super::ClientArgs;
use super::client::ApiClient;
use super::output;
use super::resolve::{Kind, Names, resolve};

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a user; the password is read from standard input.
    Create {
        /// The name they sign in with.
        username: String,
        /// A server administrator (users, workspaces, integrations, everything).
        #[arg(long)]
        admin: bool,
        /// A role in a workspace: `WORKSPACE:ROLE` or `WORKSPACE:ROLE:FLEET,FLEET` (a customer
        /// limited to those fleets); ROLE is viewer, operator or admin; ids or names. Repeatable.
        #[arg(long = "grant", value_name = "WS:ROLE[:FLEETS]")]
        grants: Vec<String>,
        /// The name the web UI shows.
        #[arg(long, default_value = "")]
        display_name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List web UI users.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one user.
    Show {
        /// User id or username.
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a user: enable or disable, admin or not, roles, password (from standard input).
    Update {
        /// User id or username.
        user: String,
        /// Let the user sign in again.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Refuse their sign-ins and API keys; their sessions end.
        #[arg(long)]
        disable: bool,
        /// true: a server administrator; false: only their roles.
        #[arg(long)]
        admin: Option<bool>,
        /// Replace the user's roles (repeatable; see `create`).
        #[arg(long = "grant", value_name = "WS:ROLE[:FLEETS]")]
        grants: Option<Vec<String>>,
        /// Read a new password from standard input.
        #[arg(long)]
        password: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a user (their sessions end).
    Delete {
        /// User id or username.
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create an API key for a user; the secret is printed once.
    KeyCreate {
        /// User id or username.
        user: String,
        /// A name for the key (where it is used).
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a user's API keys.
    KeyList {
        /// User id or username.
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete an API key.
    KeyDelete {
        /// User id or username.
        user: String,
        /// API key id or name.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn read_password() -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s)?;
    let p = s.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!p.is_empty(), "give the password on standard input");
    Ok(p)
}

async fn grants(c: &ApiClient, specs: &[String]) -> anyhow::Result<Value> {
    let mut out = Vec::new();
    for g in specs {
        let mut parts = g.splitn(3, ':');
        let (Some(ws), Some(role)) = (parts.next(), parts.next()) else {
            anyhow::bail!("--grant {g:?}: expected WORKSPACE:ROLE[:FLEETS]");
        };
        let ws = resolve(c, &Kind::workspace(), ws).await?;
        // Fleet names are unique within a workspace: look in the grant's.
        let in_ws = Kind::fleet().within("workspace_id", ws.id.clone());
        let fleets = match parts.next() {
            None => Value::Null,
            Some(list) => {
                let mut ids = Vec::new();
                for f in list.split(',').filter(|f| !f.is_empty()) {
                    ids.push(resolve(c, &in_ws, f).await?.id);
                }
                json!(ids)
            }
        };
        out.push(json!({"workspace_id": ws.id, "role": role, "fleets": fleets}));
    }
    Ok(Value::Array(out))
}

const HEADERS: [&str; 6] = ["ID", "USERNAME", "ADMIN", "ENABLED", "ROLES", "LAST LOGIN"];

/// The names of the workspaces users hold roles in, fetched once.
async fn workspaces(c: &ApiClient, users: &[Value]) -> anyhow::Result<Names> {
    let ids: Vec<String> = users
        .iter()
        .flat_map(|u| u["grants"].as_array().into_iter().flatten())
        .filter_map(|g| g["workspace_id"].as_str().map(str::to_string))
        .collect();
    Names::of(c, Kind::workspace(), ids).await
}

fn row(u: &Value, ws: &Names) -> Vec<String> {
    let roles: Vec<String> = u["grants"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let fleets = g["fleets"]
                .as_array()
                .map(|f| format!(" ({})", output::count(f.len(), "fleet")))
                .unwrap_or_default();
            format!(
                "{}:{}{fleets}",
                ws.get(g["workspace_id"].as_str().unwrap_or_default()),
                g["role"].as_str().unwrap_or_default()
            )
        })
        .collect();
    vec![
        u["id"].as_str().unwrap_or_default().to_string(),
        u["username"].as_str().unwrap_or_default().to_string(),
        u["admin"].to_string(),
        u["enabled"].to_string(),
        roles.join(", "),
        output::time(u["last_login_at"].as_i64()),
    ]
}

async fn show(c: &ApiClient, v: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(v);
    }
    let ws = workspaces(c, std::slice::from_ref(v)).await?;
    output::table(&HEADERS, &[row(v, &ws)]);
    Ok(())
}

/// Prints `line`, then the user (as JSON, or as a one-row table).
async fn done(c: &ApiClient, v: &Value, json: bool, line: String) -> anyhow::Result<()> {
    if json {
        output::json(v)?;
    }
    output::done(json, line);
    if !json {
        show(c, v, false).await?;
    }
    Ok(())
}

pub async fn run(cmd: UserCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCmd::Create {
            username,
            admin,
            grants: g,
            display_name,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let password = read_password()?;
            let body = json!({"username": username, "password": password, "admin": admin,
                              "display_name": display_name, "grants": grants(&c, &g).await?});
            let v: Value = c.post("/users", &body).await?;
            let line = format!(
                "created user {} (id {}){}",
                v["username"].as_str().unwrap_or_default(),
                v["id"].as_str().unwrap_or_default(),
                if admin { ", an administrator" } else { "" }
            );
            done(&c, &v, client.json, line).await?;
        }
        UserCmd::List { client } => {
            let c = ApiClient::from_args(&client)?;
            let v: Vec<Value> = c.get("/users", &[]).await?;
            if client.json {
                output::json(&v)?;
            } else {
                let ws = workspaces(&c, &v).await?;
                output::table(&HEADERS, &v.iter().map(|u| row(u, &ws)).collect::<Vec<_>>());
            }
        }
        UserCmd::Show { user, client } => {
            let c = ApiClient::from_args(&client)?;
            let u = resolve(&c, &Kind::user(), &user).await?;
            let v: Value = c.get(&format!("/users/{}", u.id), &[]).await?;
            show(&c, &v, client.json).await?;
        }
        UserCmd::Update {
            user,
            enable,
            disable,
            admin,
            grants: g,
            password,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let u = resolve(&c, &Kind::user(), &user).await?;
            let mut body = serde_json::Map::new();
            let mut what = Vec::new();
            if enable || disable {
                body.insert("enabled".into(), json!(enable));
                what.push(if enable { "enabled" } else { "disabled" });
            }
            if let Some(a) = admin {
                body.insert("admin".into(), json!(a));
                what.push(if a {
                    "made an administrator"
                } else {
                    "no longer an administrator"
                });
            }
            if let Some(g) = g {
                body.insert("grants".into(), grants(&c, &g).await?);
                what.push("roles replaced");
            }
            if password {
                body.insert("password".into(), json!(read_password()?));
                what.push("password changed");
            }
            let v: Value = c
                .patch(&format!("/users/{}", u.id), &Value::Object(body))
                .await?;
            let line = if what.is_empty() {
                format!("updated user {u} (nothing to change)")
            } else {
                format!("updated user {u}: {}", what.join(", "))
            };
            done(&c, &v, client.json, line).await?;
        }
        UserCmd::Delete { user, client } => {
            let c = ApiClient::from_args(&client)?;
            let u = resolve(&c, &Kind::user(), &user).await?;
            c.delete(&format!("/users/{}", u.id)).await?;
            output::done(
                client.json,
                format!("deleted user {u}: their sessions and API keys end"),
            );
        }
        UserCmd::KeyCreate { user, name, client } => {
            let c = ApiClient::from_args(&client)?;
            let u = resolve(&c, &Kind::user(), &user).await?;
            let v: Value = c
                .post(&format!("/users/{}/api-keys", u.id), &json!({"name": name}))
                .await?;
            if client.json {
                output::json(&v)?;
            } else {
                // The secret goes to standard output alone, so it can be captured.
                eprintln!(
                    "created API key {name} (id {}) for user {u}; the secret is shown only now:",
                    v["id"].as_str().unwrap_or("")
                );
                println!("{}", v["secret"].as_str().unwrap_or_default());
            }
        }
        UserCmd::KeyList { user, client } => {
            let c = ApiClient::from_args(&client)?;
            let u = resolve(&c, &Kind::user(), &user).await?;
            let v: Vec<Value> = c.get(&format!("/users/{}/api-keys", u.id), &[]).await?;
            if client.json {
                output::json(&v)?;
            } else {
                let rows: Vec<Vec<String>> = v
                    .iter()
                    .map(|k| {
                        vec![
                            k["id"].as_str().unwrap_or_default().to_string(),
                            k["name"].as_str().unwrap_or_default().to_string(),
                            output::time(k["created_at"].as_i64()),
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "CREATED"], &rows);
            }
        }
        UserCmd::KeyDelete { user, key, client } => {
            let c = ApiClient::from_args(&client)?;
            let u = resolve(&c, &Kind::user(), &user).await?;
            let k = resolve(&c, &Kind::api_key(&u.id), &key).await?;
            c.delete(&format!("/users/{}/api-keys/{}", u.id, k.id))
                .await?;
            output::done(
                client.json,
                format!("deleted API key {k} (id {}) of user {u}", k.id),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
