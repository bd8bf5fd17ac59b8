//! The assembled validation: defaults, keys, the example file, and each section's errors.

use std::time::Duration;

use jid::BareJid;

use super::*;

fn parse(text: &str) -> Result<Settings, ConfigError> {
    let raw: RawConfig = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    validate(raw)
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
            "cannot load",
        ),
    ] {
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with(key), "expected {key}, got {e}");
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
            "cannot load",
        ),
        (
            format!("{GOOD}\n[tigase]\ntimeout_secs = 0\n"),
            "tigase.timeout_secs",
        ),
        (format!("{GOOD}\n[store]\npath = \"\"\n"), "store.path"),
    ];
    for (text, key) in cases {
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with(key), "expected {key}, got {e}");
    }
}
