//! The assembled validation: defaults, keys, the example file, and each section's errors.

use std::time::Duration;

use jid::BareJid;

use super::*;

fn parse(text: &str) -> Result<Settings, ConfigError> {
    from_text("test.toml", text, &[])
}

/// `text` with the override variables `vars`.
fn parse_env(text: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    from_text("test.toml", text, &vars)
}

const GOOD: &str = r#"
    [xmpp]
    component = "status.example.com"
    server = "127.0.0.1:5347"
    secret = "s3cret"
    domains = ["Example.COM"]
    [http]
    listen = "127.0.0.1:0"
    api_keys = ["k1"]
"#;

#[test]
fn good_config_and_defaults() {
    let s = parse(GOOD).unwrap();
    assert_eq!(s.component.as_str(), "status.example.com");
    assert!(s.domains.contains("example.com"));
    assert_eq!(s.policy.default_resource.as_str(), "tigase-external");
    assert_eq!(s.policy.default_priority, -1);
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("s3cret") && !dbg.contains("k1\""), "{dbg}");
}

#[test]
fn scoped_keys() {
    let text = GOOD.replace(
        "[http]",
        r#"[[http.keys]]
        key = "adm"
        scope = "admin"
        access = "read-write"
        name = "ops"
        [[http.keys]]
        key = "team"
        scope = { domains = ["example.com"] }
        access = "write"
        [[http.keys]]
        key = "al"
        scope = { user = "Alice@Example.com" }
        access = "read"
        [http]"#,
    );
    let s = parse(&text).unwrap();
    let grants: Vec<_> = s.keys.iter().map(|(_, g)| g.clone()).collect();
    assert_eq!(grants.len(), 4, "api_keys and three [[http.keys]]");
    assert_eq!(&*grants[1].name, "ops");
    assert_eq!(grants[1].scope, crate::access::Scope::Admin);
    assert_eq!(&*grants[2].name, "key-2");
    assert_eq!(grants[2].access, crate::access::Access::Write);
    assert_eq!(
        grants[3].scope,
        crate::access::Scope::User(BareJid::new("alice@example.com").unwrap())
    );
    for (bad, key) in [
        (r#"scope = "root""#, "http.keys.scope"),
        (r#"scope = { domains = ["other.org"] }"#, "http.keys.scope"),
        (r#"scope = { user = "bob@other.org" }"#, "http.keys.scope"),
    ] {
        let text = GOOD.replace(
            "[http]",
            &format!("[[http.keys]]\nkey = \"x\"\n{bad}\naccess = \"read\"\n[http]"),
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../etc/extpresence.toml")
        .replace(
            "secret_file = \"/etc/extpresence/component-secret\"",
            "secret = \"x\"",
        )
        .replace(
            "api_key_files = [\"/etc/extpresence/api-key\"]",
            "api_keys = [\"k\"]",
        );
    let s = parse(&text).unwrap();
    assert_eq!(s.component.as_str(), "status.example.com");
    assert_eq!(s.on_shutdown, OnShutdown::Unavailable);
    assert_eq!(s.tigase_timeout, Duration::from_secs(5));
}

#[test]
fn tigase_backend() {
    let s = parse(&GOOD.replace("domains", "backend = \"tigase\"\ndomains")).unwrap();
    assert_eq!(s.backend, BackendKind::Tigase);
    assert_eq!(s.tigase_timeout, Duration::from_secs(5));
    let s = parse(&format!("{GOOD}\n[tigase]\ntimeout_secs = 2\n")).unwrap();
    assert_eq!(s.tigase_timeout, Duration::from_secs(2));
    let e = parse(&format!("{GOOD}\n[tigase]\ntimeout = 2\n")).unwrap_err();
    assert!(e.to_string().contains("timeout"), "{e}");
}

#[test]
fn status_page_origin_and_trusted_proxies() {
    let s = parse(GOOD).unwrap();
    assert!(s.public_origin.is_none() && s.trusted_proxies.is_empty());
    let s = parse(&format!(
        "{}\n[ui]\npublic_origin = \"https://Presence.Example.com/\"\n",
        GOOD.replace(
            "[http]",
            "[http]\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]"
        )
    ))
    .unwrap();
    assert_eq!(
        s.trusted_proxies,
        [
            "127.0.0.1".parse::<std::net::IpAddr>().unwrap(),
            "::1".parse().unwrap()
        ]
    );
    assert_eq!(
        s.public_origin,
        Some(crate::http::ui::PublicOrigin::parse("https://presence.example.com").unwrap())
    );
    for (text, key) in [
        (
            GOOD.replace("[http]", "[http]\ntrusted_proxies = [\"10.0.0.0/8\"]"),
            "http.trusted_proxies",
        ),
        (
            format!("{GOOD}\n[ui]\npublic_origin = \"https://p.example.com/status\"\n"),
            "ui.public_origin",
        ),
        (
            format!("{GOOD}\n[ui]\npublic_origin = \"ftp://p.example.com\"\n"),
            "ui.public_origin",
        ),
        (
            format!("{GOOD}\n[ui]\npublic_origin = \"p.example.com\"\n"),
            "ui.public_origin",
        ),
        (
            format!("{GOOD}\n[ui]\norigin = \"https://p\"\n"),
            "ui.origin",
        ),
    ] {
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.starts_with("in test.toml: ") && e.contains(&format!("{key}: ")),
            "expected {key} in test.toml, got {e}"
        );
    }
}

#[test]
fn unknown_key_rejected() {
    let e = parse(&GOOD.replace("[http]", "[http]\nlisten_addr = \"x\"")).unwrap_err();
    assert!(e.to_string().contains("listen_addr"), "{e}");
}

#[test]
fn bad_values_named() {
    let cases = [
        (GOOD.replace("status.example.com", "a@b"), "xmpp.component"),
        (GOOD.replace("[\"Example.COM\"]", "[]"), "xmpp.domains"),
        (GOOD.replace("secret = \"s3cret\"", ""), "xmpp.secret"),
        (GOOD.replace("api_keys = [\"k1\"]", ""), "http.api_keys"),
        (GOOD.replace("127.0.0.1:0", "nowhere"), "http.listen"),
        (
            format!("{GOOD}\n[status]\ndefault_priority = 0\n"),
            "status.default_priority",
        ),
        (
            GOOD.replace("domains", "backend = \"prosody\"\ndomains"),
            "xmpp.backend",
        ),
        (
            format!("{GOOD}\n[tigase]\ntimeout_secs = 0\n"),
            "tigase.timeout_secs",
        ),
        (format!("{GOOD}\n[store]\npath = \"\"\n"), "store.path"),
    ];
    for (text, key) in cases {
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.starts_with("in test.toml: ") && e.contains(&format!("{key}: ")),
            "expected {key} in test.toml, got {e}"
        );
    }
}

/// Every enum setting refuses an unknown value with the valid ones listed, from the file (with its
/// line) and from a variable (named).
#[test]
fn enum_values_listed() {
    let keys = GOOD.replace(
        "[http]",
        "[[http.keys]]\nkey = \"adm\"\nscope = \"admin\"\naccess = \"write-only\"\n[http]",
    );
    let cases = [
        (
            GOOD.replace("domains", "backend = \"prosody\"\ndomains"),
            "line 6: xmpp.backend: \"prosody\" is not a valid value: use one of \"fanout\", \"tigase\"",
        ),
        (
            format!("{GOOD}\n[status]\non_shutdown = \"drop\"\n"),
            "status.on_shutdown: \"drop\" is not a valid value: use one of \"unavailable\", \"keep\"",
        ),
        (
            keys,
            "http.keys[0].access: \"write-only\" is not a valid value: use one of \"read\", \"write\", \"read-write\"",
        ),
    ];
    for (text, want) in cases {
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("in test.toml: ") && e.contains(want), "{e}");
    }
    let e = parse_env(GOOD, &[("EXTPRESENCE__XMPP__BACKEND", "prosody")])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "in the environment variable EXTPRESENCE__XMPP__BACKEND: xmpp.backend: \"prosody\" is \
         not a valid value: use one of \"fanout\", \"tigase\""
    );
    let s = parse_env(GOOD, &[("EXTPRESENCE__XMPP__BACKEND", "tigase")]).unwrap();
    assert_eq!(s.backend, BackendKind::Tigase);
}

/// (GOOD starts with an empty line: `[xmpp]` is line 2.)
/// A number written as a string in the file is refused with the setting, its line and the fix;
/// the same digits from a variable (a string by nature) are a number.
#[test]
fn quoted_numbers_refused_in_the_file_only() {
    let text = GOOD.replace("domains", "keepalive_secs = \"30\"\ndomains");
    let e = parse(&text).unwrap_err().to_string();
    assert_eq!(
        e,
        "in test.toml: line 6: xmpp.keepalive_secs: a number is expected, not the string \"30\": \
         write it without quotes (keepalive_secs = 30)"
    );
    let e = parse(&format!(
        "{GOOD}\n[status]\nallow_non_negative_priority = \"yes\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("status.allow_non_negative_priority: true or false is expected"),
        "{e}"
    );
    let s = parse_env(GOOD, &[("EXTPRESENCE__XMPP__KEEPALIVE_SECS", "45")]).unwrap();
    assert_eq!(s.keepalive, Duration::from_secs(45));
    let e = parse_env(GOOD, &[("EXTPRESENCE__XMPP__KEEPALIVE_SECS", "4x5")])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "in the environment variable EXTPRESENCE__XMPP__KEEPALIVE_SECS: xmpp.keepalive_secs: a \
         number is expected, not \"4x5\""
    );
}

/// A variable with a typo, or whose value is refused, is named; the file is not blamed. A value
/// refused from the file names the file.
#[test]
fn variables_named_not_the_file() {
    let e = parse_env(GOOD, &[("EXTPRESENCE__HTTP__LISTN", "127.0.0.1:1")])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "in the environment variable EXTPRESENCE__HTTP__LISTN: http.listn: there is no \
             setting `listn` (the settings here: `listen`,"
        ),
        "{e}"
    );
    assert!(!e.contains("test.toml"), "{e}");
    let e = parse_env(
        GOOD,
        &[
            ("EXTPRESENCE__HTTP__LISTEN", "nowhere"),
            ("EXTPRESENCE__XMPP__KEEPALIVE_SECS", "5"),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("in the environment variable EXTPRESENCE__HTTP__LISTEN: http.listen: "),
        "{e}"
    );
    let e = parse(&GOOD.replace("127.0.0.1:0", "nowhere"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("in test.toml: http.listen: "), "{e}");
    assert_eq!(
        env_name("xmpp.keepalive_secs"),
        "EXTPRESENCE__XMPP__KEEPALIVE_SECS"
    );
}

/// A secret of the wrong type is refused without its value being repeated.
#[test]
fn wrong_type_secret_not_echoed() {
    let e = parse(&GOOD.replace("\"s3cret\"", "918273645"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("xmpp.secret: a string is expected"), "{e}");
    assert!(!e.contains("918273645"), "{e}");
}
