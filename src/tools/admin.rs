//! `gyro account …`, `gyro customer …`, `gyro catalog …`, `gyro invoice …`, `gyro plan …`,
//! `gyro session …`, `gyro reload`: the admin API from the command line. They
//! call the same HTTP endpoints as any other client (`[http]` of `gyro serve`, default
//! 127.0.0.1:9464) with the bearer token from `--token-file` or `GYRO_ADMIN_TOKEN`, print the
//! JSON (or UBL) answer on stdout, and on an error print the API's message naming the field.
//!
//! Exit status: 0 success; 1 the API refused the request (4xx/5xx, its message on stderr);
//! 2 usage, token or connection error.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

/// Where the admin API is and how to authenticate.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Base URL of gyro serve's HTTP listener.
    #[arg(long, default_value = "http://127.0.0.1:9464", global = true)]
    pub api: String,
    /// A file holding the bearer token (default: the GYRO_ADMIN_TOKEN environment variable).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Bound on the whole request, in milliseconds.
    #[arg(long, default_value_t = 10_000, global = true)]
    pub timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// List accounts in number order.
    List {
        #[arg(long)]
        after: Option<u32>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show an account (number, or subscription id such as e164:491700000001).
    Show { account: String },
    /// Credit an account; --key makes a retry safe (the same key again changes nothing).
    TopUp {
        account: String,
        /// Decimal amount in the account's currency, e.g. 10.00.
        #[arg(long)]
        amount: String,
        #[arg(long)]
        key: String,
    },
    /// Credit (positive) or debit (negative) an account by an operator's decision.
    Adjust {
        account: String,
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Bar an account: its next CCR-I is answered 4010.
    Bar { account: String },
    /// Unbar an account.
    Unbar { account: String },
    /// Create an account: BODY is a JSON object with the catalog's `[[accounts]]` keys, e.g.
    /// '{"customer":"c-acme","subscription_ids":["e164:491709999999"],"funding":"prepaid","balance":"5.00"}',
    /// or @FILE.
    Create { body: String },
    /// Update an account's catalog keys (payment details): BODY is a JSON merge patch, or @FILE.
    Update { account: String, body: String },
    /// Close an account for good: barred, its sessions aborted (ASR), never unbarred.
    Close { account: String },
}

#[derive(Debug, Subcommand)]
pub enum CustomerCommand {
    /// List customers in id order.
    List {
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show a customer and its accounts.
    Show { id: String },
    /// Create a customer: BODY is a JSON object with the catalog's `[[customers]]` keys, or @FILE.
    Create { body: String },
    /// Update a customer: BODY is a JSON merge patch of its keys (a new plan reprices its
    /// accounts: their open sessions get a RAR), or @FILE.
    Update { id: String, body: String },
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Print the catalog in force as TOML (with the changes made through the admin API).
    Show,
    /// Load a catalog file in place of the one in force (refused, naming the entry, if it is
    /// invalid or may not replace it).
    Load { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum InvoiceCommand {
    /// List invoices in number order.
    List {
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Print an invoice as JSON, or as UBL 2.1 XML with --ubl.
    Show {
        number: String,
        #[arg(long)]
        ubl: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// List the loaded catalog's plans.
    List,
    /// Check a catalog file the way gyro serve would load it (nothing is loaded).
    Validate { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List sessions (open, and closed or expired ones not yet forgotten), of one account or all.
    List {
        /// Account number or subscription id, e.g. e164:491700000001.
        #[arg(long)]
        account: Option<String>,
        /// The next_after of the previous page.
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show one session by its Session-Id: client, state, grants, holds, last decisions.
    Show { session_id: String },
    /// Abort a session: ASR to the client holding it; prints the ASA's Result-Code.
    Abort { session_id: String },
}

enum Method {
    Get,
    Post(Option<(String, &'static str)>),
    Patch(String),
    Put(String, &'static str),
}

/// A JSON body given inline or as `@FILE`.
fn body(arg: &str) -> Result<String, String> {
    match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}")),
        None => Ok(arg.to_owned()),
    }
}

/// `call` with a body read by `body`; a file that cannot be read is a usage error (2).
fn call_with(api: &ApiArgs, arg: &str, method: impl FnOnce(String) -> Method, path: &str) -> i32 {
    match body(arg) {
        Ok(b) => call(api, method(b), path),
        Err(e) => {
            eprintln!("gyro: {e}");
            2
        }
    }
}

pub fn customer(api: &ApiArgs, command: &CustomerCommand) -> i32 {
    match command {
        CustomerCommand::List { after, limit } => {
            let q = query(&[("after", after.clone()), ("limit", limit.map(|l| l.to_string()))]);
            call(api, Method::Get, &format!("/v1/customers{q}"))
        }
        CustomerCommand::Show { id } => call(api, Method::Get, &format!("/v1/customers/{}", percent(id))),
        CustomerCommand::Create { body } => {
            call_with(api, body, |b| Method::Post(Some((b, "application/json"))), "/v1/customers")
        }
        CustomerCommand::Update { id, body } => {
            call_with(api, body, Method::Patch, &format!("/v1/customers/{}", percent(id)))
        }
    }
}

pub fn catalog(api: &ApiArgs, command: &CatalogCommand) -> i32 {
    match command {
        CatalogCommand::Show => call(api, Method::Get, "/v1/catalog"),
        CatalogCommand::Load { file } => {
            let file = format!("@{}", file.display());
            call_with(api, &file, |b| Method::Put(b, "application/toml"), "/v1/catalog")
        }
    }
}

pub fn reload(api: &ApiArgs) -> i32 {
    call(api, Method::Post(None), "/v1/reload")
}

pub fn account(api: &ApiArgs, command: &AccountCommand) -> i32 {
    let enc = |s: &str| percent(s);
    let (method, path) = match command {
        AccountCommand::List { after, limit } => (
            Method::Get,
            format!(
                "/v1/accounts{}",
                query(&[("after", after.map(|a| a.to_string())), ("limit", limit.map(|l| l.to_string()))])
            ),
        ),
        AccountCommand::Show { account } => (Method::Get, format!("/v1/accounts/{}", enc(account))),
        AccountCommand::TopUp { account, amount, key } => {
            let body = serde_json::json!({ "amount": amount, "key": key }).to_string();
            (Method::Post(Some((body, "application/json"))), format!("/v1/accounts/{}/top-ups", enc(account)))
        }
        AccountCommand::Adjust { account, amount, key, reason } => {
            let mut body = serde_json::json!({ "amount": amount, "key": key });
            if let Some(r) = reason {
                body["reason"] = serde_json::Value::String(r.clone());
            }
            (
                Method::Post(Some((body.to_string(), "application/json"))),
                format!("/v1/accounts/{}/adjustments", enc(account)),
            )
        }
        AccountCommand::Bar { account } => (Method::Post(None), format!("/v1/accounts/{}/bar", enc(account))),
        AccountCommand::Unbar { account } => {
            (Method::Post(None), format!("/v1/accounts/{}/unbar", enc(account)))
        }
        AccountCommand::Create { body } => {
            return call_with(api, body, |b| Method::Post(Some((b, "application/json"))), "/v1/accounts");
        }
        AccountCommand::Update { account, body } => {
            return call_with(api, body, Method::Patch, &format!("/v1/accounts/{}", enc(account)));
        }
        AccountCommand::Close { account } => {
            (Method::Post(None), format!("/v1/accounts/{}/close", enc(account)))
        }
    };
    call(api, method, &path)
}

pub fn invoice(api: &ApiArgs, command: &InvoiceCommand) -> i32 {
    let path = match command {
        InvoiceCommand::List { after, limit } => {
            format!(
                "/v1/invoices{}",
                query(&[("after", after.clone()), ("limit", limit.map(|l| l.to_string()))])
            )
        }
        InvoiceCommand::Show { number, ubl } => {
            format!("/v1/invoices/{}{}", percent(number), if *ubl { "?format=ubl" } else { "" })
        }
    };
    call(api, Method::Get, &path)
}

pub fn plan(api: &ApiArgs, command: &PlanCommand) -> i32 {
    match command {
        PlanCommand::List => call(api, Method::Get, "/v1/plans"),
        PlanCommand::Validate { file } => match std::fs::read_to_string(file) {
            Ok(text) => call(api, Method::Post(Some((text, "application/toml"))), "/v1/plans/validate"),
            Err(e) => {
                eprintln!("gyro: {}: {e}", file.display());
                2
            }
        },
    }
}

pub fn session(api: &ApiArgs, command: &SessionCommand) -> i32 {
    let path = match command {
        SessionCommand::List { account, after, limit } => format!(
            "/v1/sessions{}",
            query(&[
                ("account", account.clone()),
                ("after", after.clone()),
                ("limit", limit.map(|l| l.to_string())),
            ])
        ),
        SessionCommand::Show { session_id } => format!("/v1/sessions/{}", percent(session_id)),
        SessionCommand::Abort { session_id } => {
            return call(api, Method::Post(None), &format!("/v1/sessions/{}/abort", percent(session_id)));
        }
    };
    call(api, Method::Get, &path)
}

/// `?a=1&b=2` of the parameters that are set.
fn query(params: &[(&str, Option<String>)]) -> String {
    let set: Vec<String> =
        params.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", percent(v)))).collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("?{}", set.join("&"))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters and `:` (subscription ids
/// keep their readable `e164:…` form in a path segment).
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn token(api: &ApiArgs) -> Result<String, String> {
    match &api.token_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| format!("--token-file {}: {e}", path.display())),
        None => std::env::var("GYRO_ADMIN_TOKEN")
            .map(|t| t.trim().to_owned())
            .map_err(|_| "no token: give --token-file or set GYRO_ADMIN_TOKEN".to_owned()),
    }
}

fn call(api: &ApiArgs, method: Method, path: &str) -> i32 {
    let token = match token(api) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gyro: {e}");
            return 2;
        }
    };
    let url = format!("{}{path}", api.api.trim_end_matches('/'));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gyro: cannot start the async runtime: {e}");
            return 2;
        }
    };
    runtime.block_on(async {
        let client = match reqwest::Client::builder().timeout(Duration::from_millis(api.timeout_ms)).build() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("gyro: {e}");
                return 2;
            }
        };
        let request = match method {
            Method::Get => client.get(&url),
            Method::Post(None) => client.post(&url),
            Method::Post(Some((body, kind))) => client.post(&url).header("Content-Type", kind).body(body),
            Method::Patch(body) => client.patch(&url).header("Content-Type", "application/json").body(body),
            Method::Put(body, kind) => client.put(&url).header("Content-Type", kind).body(body),
        };
        let response = match request.bearer_auth(token).send().await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("gyro: {url}: {e}");
                return 2;
            }
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            println!("{}", pretty(&text));
            0
        } else {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            match (v["error"].as_str(), v["field"].as_str()) {
                (Some(error), Some(field)) => eprintln!("gyro: {status}: {field}: {error}"),
                (Some(error), None) => eprintln!("gyro: {status}: {error}"),
                _ => eprintln!("gyro: {status}: {text}"),
            }
            1
        }
    })
}

/// JSON pretty-printed; anything else (UBL) as it came.
fn pretty(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_owned())
}
