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

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a user; the password is read from standard input.
    Create {
        username: String,
        /// A server administrator (users, workspaces, integrations, everything).
        #[arg(long)]
        admin: bool,
        /// A role in a workspace: `WORKSPACE:ROLE` or `WORKSPACE:ROLE:FLEET,FLEET` (a customer
        /// limited to those fleets); ROLE is viewer, operator or admin; ids or names. Repeatable.
        #[arg(long = "grant", value_name = "WS:ROLE[:FLEETS]")]
        grants: Vec<String>,
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
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a user: enable or disable, admin or not, roles, password (from standard input).
    Update {
        user: String,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
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
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create an API key for a user; the secret is printed once.
    KeyCreate {
        user: String,
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a user's API keys.
    KeyList {
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete an API key.
    KeyDelete {
        user: String,
        key_id: String,
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

/// A user id from an id or a username.
async fn user_id(c: &ApiClient, user: &str) -> anyhow::Result<String> {
    if user.parse::<uuid::Uuid>().is_ok() {
        return Ok(user.to_string());
    }
    let all: Vec<Value> = c.get("/users", &[]).await?;
    all.iter()
        .find(|u| {
            u["username"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(user))
        })
        .and_then(|u| u["id"].as_str().map(str::to_string))
        .ok_or_else(|| anyhow::anyhow!("no user {user:?}"))
}

async fn grants(c: &ApiClient, specs: &[String]) -> anyhow::Result<Value> {
    let mut out = Vec::new();
    for g in specs {
        let mut parts = g.splitn(3, ':');
        let (Some(ws), Some(role)) = (parts.next(), parts.next()) else {
            anyhow::bail!("--grant {g:?}: expected WORKSPACE:ROLE[:FLEETS]");
        };
        let ws = super::admin::resolve(c, "/workspaces", "workspace", ws).await?;
        let fleets = match parts.next() {
            None => Value::Null,
            Some(list) => {
                let mut ids = Vec::new();
                for f in list.split(',').filter(|f| !f.is_empty()) {
                    ids.push(super::admin::resolve(c, "/fleets", "fleet", f).await?);
                }
                json!(ids)
            }
        };
        out.push(json!({"workspace_id": ws, "role": role, "fleets": fleets}));
    }
    Ok(Value::Array(out))
}

const HEADERS: [&str; 6] = ["ID", "USERNAME", "ADMIN", "ENABLED", "ROLES", "LAST LOGIN"];

fn row(u: &Value) -> Vec<String> {
    let roles: Vec<String> = u["grants"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let fleets = g["fleets"]
                .as_array()
                .map(|f| format!(" ({} fleets)", f.len()))
                .unwrap_or_default();
            format!(
                "{}:{}{fleets}",
                g["workspace_id"].as_str().unwrap_or_default(),
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

fn show(v: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(v);
    }
    output::table(&HEADERS, &[row(v)]);
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
            show(&v, client.json)?;
        }
        UserCmd::List { client } => {
            let v: Vec<Value> = ApiClient::from_args(&client)?.get("/users", &[]).await?;
            if client.json {
                output::json(&v)?;
            } else {
                output::table(&HEADERS, &v.iter().map(row).collect::<Vec<_>>());
            }
        }
        UserCmd::Show { user, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = user_id(&c, &user).await?;
            let v: Value = c.get(&format!("/users/{id}"), &[]).await?;
            show(&v, client.json)?;
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
            let id = user_id(&c, &user).await?;
            let mut body = serde_json::Map::new();
            if enable || disable {
                body.insert("enabled".into(), json!(enable));
            }
            if let Some(a) = admin {
                body.insert("admin".into(), json!(a));
            }
            if let Some(g) = g {
                body.insert("grants".into(), grants(&c, &g).await?);
            }
            if password {
                body.insert("password".into(), json!(read_password()?));
            }
            let v: Value = c
                .patch(&format!("/users/{id}"), &Value::Object(body))
                .await?;
            show(&v, client.json)?;
        }
        UserCmd::Delete { user, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = user_id(&c, &user).await?;
            c.delete(&format!("/users/{id}")).await?;
            eprintln!("deleted user {user}");
        }
        UserCmd::KeyCreate { user, name, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = user_id(&c, &user).await?;
            let v: Value = c
                .post(&format!("/users/{id}/api-keys"), &json!({"name": name}))
                .await?;
            if client.json {
                output::json(&v)?;
            } else {
                // The secret goes to standard output alone, so it can be captured.
                eprintln!(
                    "API key {} ({name}); shown only now:",
                    v["id"].as_str().unwrap_or("")
                );
                println!("{}", v["secret"].as_str().unwrap_or_default());
            }
        }
        UserCmd::KeyList { user, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = user_id(&c, &user).await?;
            let v: Vec<Value> = c.get(&format!("/users/{id}/api-keys"), &[]).await?;
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
        UserCmd::KeyDelete {
            user,
            key_id,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let id = user_id(&c, &user).await?;
            c.delete(&format!("/users/{id}/api-keys/{key_id}")).await?;
            eprintln!("deleted API key {key_id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
