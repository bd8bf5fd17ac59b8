//! ejabberd's admin API (`[ejabberd] api_url`): a source of sessions — what ejabberd 23.01 does
//! not forward — and the writer of a user's side of a subscription requested in the user's name
//! ([`add_rosteritem`]; its privileged roster sets fail).
//!
//! ejabberd announces no session to a component at connect and forwards no `unavailable` when a
//! client closes its stream or loses its connection without one (README, "What the server
//! tells"). With `[ejabberd] api_url` set, this task asks mod_http_api's
//! `connected_users_info` every `poll_secs` (and at once when the fan-out task asks,
//! right after each connect) and hands the list to the fan-out task, which reconciles the
//! observed sessions with it ([`Polled`]).

use std::sync::Arc;
use std::time::Duration;

use jid::FullJid;
use serde::Deserialize;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::base::clock::now_ms;
use crate::model::{RosterItem, Show};

/// Longest wait for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One session as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSession {
    /// The session's full JID.
    pub jid: FullJid,
    /// Its `<show/>` (`available` in the API: none).
    pub show: Option<Show>,
    /// Its status text.
    pub status: Option<String>,
    /// Its priority.
    pub priority: i8,
    /// Seconds since it logged in.
    pub uptime_secs: u64,
}

/// The outcome of one poll.
#[derive(Debug)]
pub struct Polled {
    /// When the request was sent (ms since the Unix epoch): what changed after it is newer than
    /// the list.
    pub started: u64,
    /// The sessions, or why not.
    pub result: Result<Vec<ApiSession>, String>,
}

#[derive(Debug, Deserialize)]
struct Row {
    jid: String,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    status: String,
    #[serde(default)]
    statustext: String,
    #[serde(default)]
    uptime: u64,
}

/// Why a call of ejabberd's admin API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// `connected_users_info` answered something that is not its list.
    #[error("connected_users_info answered something else: {0}")]
    NotSessions(serde_json::Error),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(reqwest::Error),
    /// The request failed (no answer, or no whole body).
    #[error("{url}: {error}")]
    Request {
        /// The command's URL.
        url: String,
        /// What failed.
        error: reqwest::Error,
    },
    /// The command answered, but not with success.
    #[error("{url} answered {code}: {text}")]
    Refused {
        /// The command's URL.
        url: String,
        /// The HTTP status.
        code: reqwest::StatusCode,
        /// The start of the answer's body (200 bytes or characters).
        text: String,
    },
}

/// Parse a `connected_users_info` answer; rows that do not parse are skipped.
pub fn parse(body: &[u8]) -> Result<Vec<ApiSession>, ApiError> {
    let rows: Vec<Row> = serde_json::from_slice(body).map_err(ApiError::NotSessions)?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let jid = FullJid::new(&r.jid).ok()?;
            let show = match r.status.as_str() {
                "away" => Some(Show::Away),
                "chat" => Some(Show::Chat),
                "dnd" => Some(Show::Dnd),
                "xa" => Some(Show::Xa),
                _ => None,
            };
            let status: String = r
                .statustext
                .chars()
                .filter(|c| !c.is_control())
                .take(1024)
                .collect();
            Some(ApiSession {
                jid,
                show,
                status: (!status.is_empty()).then_some(status),
                priority: r.priority.clamp(-128, 127) as i8,
                uptime_secs: r.uptime,
            })
        })
        .collect())
}

/// Ask `base`/connected_users_info every `every`, and when `now` is notified, until `shutdown`.
pub async fn run(
    base: reqwest::Url,
    every: Duration,
    now: Arc<Notify>,
    polls: mpsc::Sender<Polled>,
    shutdown: CancellationToken,
) {
    let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client for ejabberd's API");
            return;
        }
    };
    let url = format!(
        "{}/connected_users_info",
        base.as_str().trim_end_matches('/')
    );
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            () = now.notified() => {}
        }
        let started = now_ms();
        let result = async {
            let answer = client
                .post(&url)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .map_err(|error| ApiError::Request {
                    url: url.clone(),
                    error,
                })?;
            let code = answer.status();
            let body = answer.bytes().await.map_err(|error| ApiError::Request {
                url: url.clone(),
                error,
            })?;
            if !code.is_success() {
                return Err(ApiError::Refused {
                    url: url.clone(),
                    code,
                    text: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
                });
            }
            parse(&body)
        }
        .await
        .map_err(|e| e.to_string());
        if polls.send(Polled { started, result }).await.is_err() {
            return;
        }
    }
}

/// Set `user`'s roster item for `item.jid` with `subscription` through the admin command
/// `add_rosteritem` (ejabberd 23.01 refuses privileged roster sets: upstream bug #3942). Its
/// arguments as 23.01 has them: `group` holds the groups separated by `;`.
pub async fn add_rosteritem(
    base: &reqwest::Url,
    user: &jid::BareJid,
    item: &RosterItem,
    subscription: &str,
) -> Result<(), ApiError> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(ApiError::Client)?;
    let url = format!("{}/add_rosteritem", base.as_str().trim_end_matches('/'));
    let body = serde_json::json!({
        "localuser": user.node().map(|n| n.as_str()).unwrap_or_default(),
        "localhost": user.domain().as_str(),
        "user": item.jid.node().map(|n| n.as_str()).unwrap_or_default(),
        "host": item.jid.domain().as_str(),
        "nick": item.name.clone().unwrap_or_default(),
        "group": item.groups.join(";"),
        "subs": subscription,
    });
    let answer = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|error| ApiError::Request {
            url: url.clone(),
            error,
        })?;
    let code = answer.status();
    let text = answer.text().await.unwrap_or_default();
    // Success is 200 with `0` (the command's result code).
    if code.is_success() && text.trim() == "0" {
        Ok(())
    } else {
        Err(ApiError::Refused {
            url,
            code,
            text: text.chars().take(200).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_ejabberd_23_01_answers() {
        // As measured on ejabberd 23.01 (mod_http_api).
        let body = br#"[{"jid":"bob@localhost/desk","connection":"c2s","ip":"127.0.0.1","port":39812,"priority":5,"node":"n@localhost","uptime":1,"status":"dnd","resource":"desk","statustext":"busy"},
                        {"jid":"carol@localhost/x","priority":0,"status":"available","statustext":"","uptime":7},
                        {"jid":"not a jid","priority":0}]"#;
        let s = parse(body).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].jid.to_string(), "bob@localhost/desk");
        assert_eq!(
            (s[0].show, s[0].status.as_deref(), s[0].priority),
            (Some(Show::Dnd), Some("busy"), 5)
        );
        assert_eq!(
            (s[1].show, s[1].status.as_deref(), s[1].uptime_secs),
            (None, None, 7)
        );
        assert!(parse(b"{\"status\":\"error\"}").is_err());
    }
}
