//! The model: what a status is and what makes one valid, and what the server announces of a
//! session or a roster item.
//!
//! This is the ground floor beside `base/`: it uses nothing else of ours, and every layer above
//! (the store, the status table, the read model, the link, the dialects) may use it. [`Show`],
//! [`Status`], [`Source`], [`Word`] and [`StatusPolicy`] define and validate a status;
//! [`Announced`] and [`RosterItem`] (`observed.rs`) are what the server tells of a session's
//! presence and of a roster entry, built by `xmpp/stanzas.rs` and kept by `observe/`.
//!
//! A held status belongs to (user, resource, source): several feeding systems (a PBX, a calendar)
//! speak for one resource without clobbering each other. What contacts see of a resource is its
//! **effective** status: the most restrictive of its sources (`dnd` > `xa` > `away` > `online` >
//! `chat`), the most recent update winning a tie. A source's status may carry an expiry, after
//! which it is removed as if cleared. Holding them is `status/` (`StatusTable`).

mod observed;

use std::fmt;

use jid::ResourcePart;

pub use observed::{Announced, RosterItem};

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
/// Most distinct source names in use at once (by held statuses, and by requests in flight).
pub const MAX_SOURCES: usize = 4096;
/// Most source names one credential may bring in that are in use at once: a name counts for
/// the credential whose committed status first used it, until no status uses it any more.
pub const MAX_SOURCES_PER_CREDENTIAL: usize = 64;

/// The name of a feeding system (`[a-z0-9_.-]{1,32}`), interned: a copyable index into a
/// process-wide list of names, so a million held statuses do not carry a million copies of
/// "default" (see BENCHMARKS.md, P4).
///
/// A name is in use while a held status has it (the table counts them) or a request holds a
/// [`SourceRef`] to it; a name no longer in use is reclaimed (a sweep, when the list or a
/// credential's share is full), so names refused or cleared never use up the list. Interning
/// and the counts touch a lock only when a request brings a name; the table's counting is one
/// atomic add or subtract when a source comes to or leaves a resource.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(u16);

/// The source that the Tigase dialect writes and requests default to.
pub const DEFAULT_SOURCE_NAME: &str = "default";

/// The list of source names with their use counts (one process-wide; small ones in tests).
struct Registry {
    /// Uses of each slot: held statuses plus [`SourceRef`]s; pinned names never reach 0.
    refs: Box<[std::sync::atomic::AtomicU32]>,
    names: std::sync::RwLock<Names>,
    per_credential: usize,
}

/// A slot of the list: the name, who brought it in, whether it is pinned.
type NameSlot = (std::sync::Arc<str>, Option<std::sync::Arc<str>>, bool);

#[derive(Default)]
struct Names {
    /// By index: the name, who brought it in (`None`: the configuration, the store, a clear),
    /// and whether it is pinned (never reclaimed).
    slots: Vec<Option<NameSlot>>,
    index: std::collections::HashMap<std::sync::Arc<str>, u16>,
    free: Vec<u16>,
    /// Names in the list per credential that brought them in.
    brought: std::collections::HashMap<std::sync::Arc<str>, usize>,
}

impl Registry {
    fn new(capacity: usize, per_credential: usize) -> Registry {
        let r = Registry {
            refs: (0..capacity)
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
            names: std::sync::RwLock::new(Names::default()),
            per_credential,
        };
        r.acquire(DEFAULT_SOURCE_NAME, None, true).expect("room");
        r
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Names> {
        self.names.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Intern `name` and take one use of it. `by`: the credential that would bring it in (its
    /// share is checked and charged; a name brought by nobody is adopted); `None` for uses that
    /// will not be held (a clear) or the configuration. `pin`: never reclaimed.
    fn acquire(&self, name: &str, by: Option<&str>, pin: bool) -> Result<u16, InvalidStatus> {
        use std::sync::atomic::Ordering;
        let mut n = self.write();
        let i = match n.index.get(name).copied() {
            Some(i) => i,
            None => {
                if n.free.is_empty() && n.slots.len() >= self.refs.len() {
                    self.sweep(&mut n);
                }
                let i = match n.free.pop() {
                    Some(i) => i,
                    None if n.slots.len() < self.refs.len() => {
                        n.slots.push(None);
                        (n.slots.len() - 1) as u16
                    }
                    None => return Err(InvalidStatus::TooManySources),
                };
                let text: std::sync::Arc<str> = name.into();
                n.slots[i as usize] = Some((text.clone(), None, pin));
                n.index.insert(text, i);
                i
            }
        };
        // In use from here (so a sweep below keeps it).
        self.refs[i as usize].fetch_add(1, Ordering::AcqRel);
        if let (Some(by), Some((_, None, false))) = (by, &n.slots[i as usize]) {
            // Charge the credential that brings the name into use.
            if n.brought.get(by).copied().unwrap_or(0) >= self.per_credential {
                self.sweep(&mut n);
            }
            let count = n.brought.get(by).copied().unwrap_or(0);
            if count >= self.per_credential {
                if self.refs[i as usize].fetch_sub(1, Ordering::AcqRel) == 1 {
                    Self::forget(&mut n, i);
                }
                return Err(InvalidStatus::TooManySourcesOf(self.per_credential));
            }
            let by: std::sync::Arc<str> = by.into();
            n.brought.insert(by.clone(), count + 1);
            if let Some(slot) = &mut n.slots[i as usize] {
                slot.1 = Some(by);
            }
        }
        Ok(i)
    }

    fn forget(n: &mut Names, i: u16) {
        if let Some((name, by, _)) = n.slots[i as usize].take() {
            n.index.remove(&name);
            n.free.push(i);
            if let Some(by) = by {
                if let Some(c) = n.brought.get_mut(&by) {
                    *c -= 1;
                    if *c == 0 {
                        n.brought.remove(&by);
                    }
                }
            }
        }
    }

    /// Reclaim every name no longer in use (under the write lock: a use only starts from 0
    /// there).
    fn sweep(&self, n: &mut Names) {
        for i in 0..n.slots.len() {
            let unused = matches!(&n.slots[i], Some((_, _, false)))
                && self.refs[i].load(std::sync::atomic::Ordering::Acquire) == 0;
            if unused {
                Self::forget(n, i as u16);
            }
        }
    }

    fn retain(&self, i: u16) {
        self.refs[i as usize].fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn release(&self, i: u16) {
        self.refs[i as usize].fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn name(&self, i: u16) -> Option<std::sync::Arc<str>> {
        let n = self.names.read().unwrap_or_else(|e| e.into_inner());
        n.slots.get(i as usize)?.as_ref().map(|s| s.0.clone())
    }

    fn in_use(&self, name: &str) -> bool {
        let n = self.names.read().unwrap_or_else(|e| e.into_inner());
        n.index
            .get(name)
            .is_some_and(|i| self.refs[*i as usize].load(std::sync::atomic::Ordering::Acquire) > 0)
    }
}

fn registry() -> &'static Registry {
    static NAMES: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| Registry::new(MAX_SOURCES, MAX_SOURCES_PER_CREDENTIAL))
}

/// One use of a source name, held by a request until its edit is committed and applied (the
/// held status then uses the name itself); dropping it gives the use back.
#[derive(Debug)]
pub struct SourceRef(Source);

impl SourceRef {
    /// The source.
    pub fn get(&self) -> Source {
        self.0
    }
}

impl Drop for SourceRef {
    fn drop(&mut self) {
        registry().release(self.0 .0);
    }
}

impl Source {
    /// The source `default`.
    pub const DEFAULT: Source = Source(0);

    /// Check a source name (`[a-z0-9_.-]{1,32}`) without interning it.
    pub fn check(name: &str) -> Result<(), InvalidStatus> {
        let valid = !name.is_empty()
            && name.len() <= MAX_SOURCE_CHARS
            && name
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'));
        if valid {
            Ok(())
        } else {
            Err(InvalidStatus::Source(name.chars().take(64).collect()))
        }
    }

    /// Check and intern a name for good (configured names, tests): it is never reclaimed.
    pub fn parse(name: &str) -> Result<Source, InvalidStatus> {
        Source::check(name)?;
        registry().acquire(name, None, true).map(Source)
    }

    /// Check and intern a name read from the store: in use only through the held statuses the
    /// table makes of it.
    pub fn load(name: &str) -> Result<Source, InvalidStatus> {
        Source::check(name)?;
        let i = registry().acquire(name, None, false)?;
        registry().release(i);
        Ok(Source(i))
    }

    /// Check and intern a name for a request, taking one use of it until the [`SourceRef`] is
    /// dropped. `by`: the credential of a request that would hold a status of it (its share,
    /// [`MAX_SOURCES_PER_CREDENTIAL`], is charged); `None` for a clear.
    pub fn acquire(name: &str, by: Option<&str>) -> Result<SourceRef, InvalidStatus> {
        Source::check(name)?;
        registry()
            .acquire(name, by, false)
            .map(|i| SourceRef(Source(i)))
    }

    /// Whether a status or a request uses the name now.
    pub fn in_use(name: &str) -> bool {
        registry().in_use(name)
    }

    /// One more held status of this source (the table).
    pub(crate) fn retain(self) {
        registry().retain(self.0);
    }

    /// One held status of this source fewer (the table).
    pub(crate) fn release(self) {
        registry().release(self.0);
    }

    /// The name.
    pub fn as_str(self) -> String {
        registry()
            .name(self.0)
            .map_or_else(String::new, |n| n.to_string())
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Source({})", self.as_str())
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// Longest accepted `expires_in`, in seconds (30 days).
pub const MAX_EXPIRY_SECS: u64 = 2_592_000;

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
    #[error("too many distinct sources in use (at most {MAX_SOURCES}); reuse the names you have")]
    TooManySources,
    /// The credential has brought in as many source names as it may.
    #[error("this credential has brought in {0} source names that are in use, its limit; reuse them, or clear the statuses of one")]
    TooManySourcesOf(usize),
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

    /// The attack of issue 19: names of refused requests never take a slot (they are only
    /// acquired once a request is valid); names no status uses any more are reclaimed; one
    /// credential brings in at most its share, others still can.
    #[test]
    fn source_names_are_reclaimed_and_shared_out() {
        let r = Registry::new(8, 3);
        // "default" is pinned: 7 slots left. The attacker brings 3 names into use (its share).
        let held: Vec<u16> = (0..3)
            .map(|i| {
                r.acquire(&format!("a{i}"), Some("attacker"), false)
                    .unwrap()
            })
            .collect();
        assert_eq!(
            r.acquire("a3", Some("attacker"), false),
            Err(InvalidStatus::TooManySourcesOf(3))
        );
        // Another credential is not affected, and clears (by nobody) take no share.
        for i in 0..4 {
            let c = r.acquire(&format!("c{i}"), None, false).unwrap();
            r.release(c); // the clear is done
        }
        let mut others = Vec::new();
        for i in 0..4 {
            others.push(r.acquire(&format!("o{i}"), Some("other"), false));
        }
        assert_eq!(
            others[3],
            Err(InvalidStatus::TooManySourcesOf(3)),
            "{others:?}"
        );
        // The list is full now (default + 3 + 3 in use + 1 free): freeing the attacker's names
        // (its statuses cleared) gives the slots and its share back.
        for i in held {
            r.release(i);
        }
        assert!(!r.in_use("a0"));
        for i in 0..3 {
            r.acquire(&format!("b{i}"), Some("attacker"), false)
                .unwrap();
        }
        assert!(r.acquire("x", Some("third"), false).is_ok());
        assert_eq!(
            r.acquire("y", Some("third"), false),
            Err(InvalidStatus::TooManySources)
        );
        assert_eq!(r.name(0).as_deref(), Some("default"));
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
