//! Domain names as configured and as asked for: one normaliser for all of them.

use jid::BareJid;

/// `s` as a domain (stringprep-normalised), or `None` if it is not one (a JID with a local part,
/// or unparsable).
pub fn normalize_domain(s: &str) -> Option<String> {
    BareJid::new(s)
        .ok()
        .filter(|j| j.node().is_none())
        .map(|j| j.domain().as_str().to_string())
}
