//! The model: what a status is, what makes one valid, and the table that holds them.
//!
//! This is the ground floor: apart from the table writing through to the store, it uses nothing
//! else of ours. [`Show`], [`Status`], [`Source`], [`Word`] and [`StatusPolicy`] define and
//! validate a status; [`StatusTable`] is the one shared handle over the held statuses.
//!
//! A held status belongs to (user, resource, source): several feeding systems (a PBX, a calendar)
//! speak for one resource without clobbering each other. What contacts see of a resource is its
//! **effective** status: the most restrictive of its sources (`dnd` > `xa` > `away` > `online` >
//! `chat`), the most recent update winning a tie. A source's status may carry an expiry, after
//! which it is removed as if cleared.

mod table;

use std::fmt;

use jid::ResourcePart;

pub use table::{
    Applied, Change, Changes, Edit, Held, ObserverFn, ResourceStatus, Roster, SourceStatus,
    StatusTable,
};

/// Longest accepted status text, in characters.
pub const MAX_STATUS_CHARS: usize = 1024;

/// The `<show/>` values of RFC 6121.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Show {
    /// Free for chat.
    Chat,
    /// Away.
    Away,
    /// Extended away.
    Xa,
    /// Do not disturb.
    Dnd,
}

impl Show {
    /// Parse the wire value (`chat`, `away`, `xa`, `dnd`).
    pub fn parse(s: &str) -> Result<Show, InvalidStatus> {
        match s {
            "chat" => Ok(Show::Chat),
            "away" => Ok(Show::Away),
            "xa" => Ok(Show::Xa),
            "dnd" => Ok(Show::Dnd),
            other => Err(InvalidStatus::Show(other.chars().take(64).collect())),
        }
    }

    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Show::Chat => "chat",
            Show::Away => "away",
            Show::Xa => "xa",
            Show::Dnd => "dnd",
        }
    }
}

/// The presence vocabulary of the API: one word, as the IPWorks `Presence` property and XMPP's
/// `<show/>`. `offline` clears the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Word {
    /// Available, no `<show/>`.
    Online,
    /// `<show>chat</show>`.
    Chat,
    /// `<show>away</show>`.
    Away,
    /// `<show>xa</show>`.
    Xa,
    /// `<show>dnd</show>`.
    Dnd,
    /// Clear this source.
    Offline,
}

impl Word {
    /// Every word, in the API's order.
    pub const ALL: [Word; 6] = [
        Word::Online,
        Word::Chat,
        Word::Away,
        Word::Xa,
        Word::Dnd,
        Word::Offline,
    ];

    /// Parse the API value.
    pub fn parse(s: &str) -> Result<Word, InvalidStatus> {
        Word::ALL
            .into_iter()
            .find(|w| w.as_str() == s)
            .ok_or_else(|| InvalidStatus::Presence(s.chars().take(64).collect()))
    }

    /// The API value.
    pub fn as_str(self) -> &'static str {
        match self {
            Word::Online => "online",
            Word::Chat => "chat",
            Word::Away => "away",
            Word::Xa => "xa",
            Word::Dnd => "dnd",
            Word::Offline => "offline",
        }
    }

    /// The `<show/>` of an available word (`Some(None)` for `online`), `None` for `offline`.
    pub fn show(self) -> Option<Option<Show>> {
        match self {
            Word::Online => Some(None),
            Word::Chat => Some(Some(Show::Chat)),
            Word::Away => Some(Some(Show::Away)),
            Word::Xa => Some(Some(Show::Xa)),
            Word::Dnd => Some(Some(Show::Dnd)),
            Word::Offline => None,
        }
    }

    /// The word of an available `<show/>`.
    pub fn of(show: Option<Show>) -> Word {
        match show {
            None => Word::Online,
            Some(Show::Chat) => Word::Chat,
            Some(Show::Away) => Word::Away,
            Some(Show::Xa) => Word::Xa,
            Some(Show::Dnd) => Word::Dnd,
        }
    }
}

/// How restrictive a `<show/>` is when sources of one resource are combined: the highest wins
/// (`dnd` > `xa` > `away` > online > `chat`).
pub fn restrictiveness(show: Option<Show>) -> u8 {
    match show {
        Some(Show::Chat) => 0,
        None => 1,
        Some(Show::Away) => 2,
        Some(Show::Xa) => 3,
        Some(Show::Dnd) => 4,
    }
}

/// Longest source name.
pub const MAX_SOURCE_CHARS: usize = 32;
/// Most distinct source names one process keeps (they are interned for good).
pub const MAX_SOURCES: usize = 4096;

/// The name of a feeding system (`[a-z0-9_.-]{1,32}`), interned: a copyable index into a
/// process-wide list of names, so a million held statuses do not carry a million copies of
/// "default" (see BENCHMARKS.md, P4).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(u16);

fn source_names() -> &'static std::sync::RwLock<Vec<&'static str>> {
    static NAMES: std::sync::OnceLock<std::sync::RwLock<Vec<&'static str>>> =
        std::sync::OnceLock::new();
    NAMES.get_or_init(|| std::sync::RwLock::new(vec![DEFAULT_SOURCE_NAME]))
}

/// The source that the Tigase dialect writes and requests default to.
pub const DEFAULT_SOURCE_NAME: &str = "default";

impl Source {
    /// The source `default`.
    pub const DEFAULT: Source = Source(0);

    /// Check and intern a source name.
    pub fn parse(name: &str) -> Result<Source, InvalidStatus> {
        let valid = !name.is_empty()
            && name.len() <= MAX_SOURCE_CHARS
            && name
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'));
        if !valid {
            return Err(InvalidStatus::Source(name.chars().take(64).collect()));
        }
        let lock = source_names();
        if let Some(i) = lock
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .position(|n| *n == name)
        {
            return Ok(Source(i as u16));
        }
        let mut names = lock.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = names.iter().position(|n| *n == name) {
            return Ok(Source(i as u16));
        }
        if names.len() >= MAX_SOURCES {
            return Err(InvalidStatus::TooManySources);
        }
        names.push(Box::leak(name.to_string().into_boxed_str()));
        Ok(Source((names.len() - 1) as u16))
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        source_names().read().unwrap_or_else(|e| e.into_inner())[self.0 as usize]
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Source({})", self.as_str())
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest accepted `expires_in`, in seconds (30 days).
pub const MAX_EXPIRY_SECS: u64 = 2_592_000;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl fmt::Display for Show {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An available status of one synthetic resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `<show/>`, absent for plain "available".
    pub show: Option<Show>,
    /// `<status/>` text, validated by [`validate_text`].
    pub text: Option<String>,
    /// `<priority/>`.
    pub priority: i8,
}

/// Why a requested status is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidStatus {
    /// Show is not chat/away/xa/dnd.
    #[error("show {0:?} is not one of chat, away, xa, dnd")]
    Show(String),
    /// Priority is not an integer in -128..127.
    #[error("priority {0:?} is not an integer in -128..127")]
    Priority(String),
    /// Priority is 0 or more while that is not allowed.
    #[error("priority {0} is not negative; a synthetic resource must have a negative priority so it never receives messages")]
    NonNegativePriority(i64),
    /// Status text contains a control character.
    #[error("status contains a control character (U+{0:04X})")]
    ControlCharacter(u32),
    /// Status text is too long.
    #[error("status is {0} characters long; the limit is {MAX_STATUS_CHARS}")]
    TooLong(usize),
    /// The resource is not a valid XMPP resource.
    #[error("resource {0:?} is not a valid XMPP resource")]
    Resource(String),
    /// The presence word is not one of the vocabulary.
    #[error("presence {0:?} is not one of online, chat, away, xa, dnd, offline")]
    Presence(String),
    /// The source name is not `[a-z0-9_.-]{{1,32}}`.
    #[error("source {0:?} is not 1 to 32 characters of a-z, 0-9, '_', '.', '-'")]
    Source(String),
    /// Too many distinct source names are in use.
    #[error("too many distinct sources (at most {MAX_SOURCES}); reuse the names you have")]
    TooManySources,
    /// The expiry is out of range or not a time.
    #[error("{0}")]
    Expiry(String),
}

/// Check status text: at most [`MAX_STATUS_CHARS`] characters, no control characters other than
/// tab and line feed (others are not allowed in XML or corrupt the stream; a carriage return
/// would reach contacts as a line feed, since servers re-serialise it), no non-characters
/// U+FFFE/U+FFFF.
pub fn validate_text(text: &str) -> Result<(), InvalidStatus> {
    check_text(text, false)
}

/// The check of text loaded from the store: as [`validate_text`], but a carriage return passes
/// (format-1 stores may hold one: it was accepted then, and XML can carry it).
pub fn validate_stored_text(text: &str) -> Result<(), InvalidStatus> {
    check_text(text, true)
}

fn check_text(text: &str, allow_cr: bool) -> Result<(), InvalidStatus> {
    let mut count = 0usize;
    for c in text.chars() {
        count += 1;
        let bad = match c {
            '\r' => !allow_cr,
            '\u{0}'..='\u{8}'
            | '\u{b}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{fffe}'
            | '\u{ffff}' => true,
            _ => false,
        };
        if bad {
            return Err(InvalidStatus::ControlCharacter(c as u32));
        }
    }
    if count > MAX_STATUS_CHARS {
        return Err(InvalidStatus::TooLong(count));
    }
    Ok(())
}

/// Defaults and limits that apply to every requested status (from `[status]`).
#[derive(Debug, Clone)]
pub struct StatusPolicy {
    /// Resource used when a request names none.
    pub default_resource: ResourcePart,
    /// Priority used when a request names none.
    pub default_priority: i8,
    /// Whether priorities of 0 or more are accepted.
    pub allow_non_negative_priority: bool,
}

impl StatusPolicy {
    /// Parse and check a priority given as text (e.g. `"-1"`), or take the default when absent.
    pub fn priority(&self, given: Option<&str>) -> Result<i8, InvalidStatus> {
        let Some(given) = given.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(self.default_priority);
        };
        let value: i64 = given
            .parse()
            .map_err(|_| InvalidStatus::Priority(given.chars().take(64).collect()))?;
        let p = i8::try_from(value).map_err(|_| InvalidStatus::Priority(given.to_string()))?;
        if p >= 0 && !self.allow_non_negative_priority {
            return Err(InvalidStatus::NonNegativePriority(value));
        }
        Ok(p)
    }

    /// Parse a resource, or take the default when absent.
    pub fn resource(&self, given: Option<&str>) -> Result<ResourcePart, InvalidStatus> {
        match given {
            None => Ok(self.default_resource.clone()),
            Some(r) => {
                let bad = || InvalidStatus::Resource(r.chars().take(64).collect());
                if r.chars().any(char::is_control) {
                    return Err(bad());
                }
                ResourcePart::new(r)
                    .map(|r| r.into_owned())
                    .map_err(|_| bad())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: bool) -> StatusPolicy {
        StatusPolicy {
            default_resource: ResourcePart::new("tigase-external").unwrap().into_owned(),
            default_priority: -1,
            allow_non_negative_priority: allow,
        }
    }

    #[test]
    fn show_values() {
        for s in ["chat", "away", "xa", "dnd"] {
            assert_eq!(Show::parse(s).unwrap().as_str(), s);
        }
        assert!(Show::parse("busy").is_err());
        assert!(Show::parse("XA").is_err());
    }

    #[test]
    fn priorities() {
        let p = policy(false);
        assert_eq!(p.priority(None).unwrap(), -1);
        assert_eq!(p.priority(Some("-128")).unwrap(), -128);
        assert!(matches!(
            p.priority(Some("-129")),
            Err(InvalidStatus::Priority(_))
        ));
        assert!(matches!(
            p.priority(Some("0")),
            Err(InvalidStatus::NonNegativePriority(0))
        ));
        assert!(matches!(
            p.priority(Some("1.5")),
            Err(InvalidStatus::Priority(_))
        ));
        assert_eq!(policy(true).priority(Some("127")).unwrap(), 127);
        assert!(policy(true).priority(Some("128")).is_err());
    }

    #[test]
    fn texts() {
        assert!(validate_text("On the phone\nline 2\ttab").is_ok());
        assert_eq!(
            validate_text("bell\u{7}"),
            Err(InvalidStatus::ControlCharacter(7))
        );
        assert!(validate_text("\u{85}").is_err());
        assert_eq!(
            validate_text("line\r\nbreak"),
            Err(InvalidStatus::ControlCharacter(13))
        );
        assert!(validate_text(&"é".repeat(1024)).is_ok());
        assert_eq!(
            validate_text(&"a".repeat(1025)),
            Err(InvalidStatus::TooLong(1025))
        );
    }

    #[test]
    fn resources() {
        let p = policy(false);
        assert_eq!(p.resource(None).unwrap().as_str(), "tigase-external");
        assert_eq!(p.resource(Some("phone")).unwrap().as_str(), "phone");
        assert!(p.resource(Some("")).is_err());
        assert!(p.resource(Some("a\u{1}b")).is_err());
    }
}
