//! The man page, extpresence(1), for `extpresence generate-assets` (the package installs it).
//!
//! Generated from the clap definitions (main.rs) by clap_mangen: the title, NAME, SYNOPSIS,
//! DESCRIPTION and OPTIONS of the binary, then COMMANDS with one subsection per command (its own
//! synopsis, description, options and arguments; `token`'s commands each in theirs), so that a
//! command or an option added to the definitions appears by itself. Then the sections written
//! here: EXIT STATUS (with the codes the binary really uses, given by main.rs and
//! [`cli`](crate::cli)), FILES, ENVIRONMENT, SIGNALS (what main.rs and [`run`](crate::run) do),
//! EXAMPLES, SEE ALSO. One page: it refers to no other extpresence page.

use crate::cli::{EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE};

/// The daemon's own exit codes, which main.rs defines.
pub struct DaemonExits {
    /// An invalid configuration.
    pub config: u8,
    /// The HTTP listener cannot be bound.
    pub bind: u8,
}

/// extpresence(1) in roff, from the binary's clap definition `cmd`.
pub fn render(cmd: clap::Command, exits: &DaemonExits) -> std::io::Result<Vec<u8>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    out.extend_from_slice(DAEMON.as_bytes());
    man.render_options_section(&mut out)?;
    out.extend_from_slice(b".SH COMMANDS\n");
    out.extend_from_slice(COMMANDS.as_bytes());
    for sub in visible(&cmd) {
        command(&mut out, sub, cmd.get_name())?;
    }
    out.extend_from_slice(exit_status(exits).as_bytes());
    for section in [FILES, ENVIRONMENT, SIGNALS, EXAMPLES, SEE_ALSO] {
        out.extend_from_slice(section.as_bytes());
    }
    man.render_version_section(&mut out)?;
    Ok(once_strings(&out))
}

/// Every clap_mangen render starts with the definition of the `Aq` string; keep the first.
fn once_strings(page: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(page);
    let mut seen = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with(".ie \\n(.g .ds Aq") {
            if seen {
                continue;
            }
            seen = true;
        } else if line.starts_with(".el .ds Aq") && out.lines().count() > 1 {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.into_bytes()
}

/// The subcommands a user sees (not `generate-assets`, not clap's `help`).
fn visible(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

/// One command's subsection: synopsis, description, options and arguments (the global options
/// are documented once, under OPTIONS); then its own commands.
fn command(out: &mut Vec<u8>, sub: &clap::Command, parent: &str) -> std::io::Result<()> {
    let name = format!("{parent} {}", sub.get_name());
    let mut page = sub.clone().bin_name(&name).mut_args(|a| {
        if a.is_global_set() || a.get_id() == "help" {
            a.hide(true)
        } else {
            a
        }
    });
    page.build();
    let man = clap_mangen::Man::new(page.clone());
    out.extend_from_slice(format!(".SS \"{}\"\n", escape(&name)).as_bytes());
    for (render, heading) in [
        (
            clap_mangen::Man::render_synopsis_section as Render,
            "SYNOPSIS",
        ),
        (clap_mangen::Man::render_description_section, "DESCRIPTION"),
        (clap_mangen::Man::render_options_section, "OPTIONS"),
    ] {
        let mut part = Vec::new();
        render(&man, &mut part)?;
        let text = body(&String::from_utf8_lossy(&part));
        if heading != "SYNOPSIS" && !text.is_empty() {
            out.extend_from_slice(b".PP\n");
        }
        out.extend_from_slice(text.as_bytes());
    }
    for child in visible(&page) {
        command(out, child, &name)?;
    }
    Ok(())
}

type Render = fn(&clap_mangen::Man, &mut dyn std::io::Write) -> std::io::Result<()>;

/// A section clap_mangen rendered on its own, without the string definitions every render starts
/// with and without its `.SH` heading (the command's `.SS` stands for it).
fn body(rendered: &str) -> String {
    rendered
        .lines()
        .filter(|l| {
            !(l.starts_with(".ie \\n(.g") || l.starts_with(".el .ds Aq") || l.starts_with(".SH "))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Text safe in a roff line: `-` as `\-`, `\` as `\e`.
fn escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

const DAEMON: &str = r#".PP
The daemon connects to the XMPP server as an external component (XEP\-0114, \fB[xmpp] server\fR, \fBcomponent\fR, \fBsecret\fR) and reconnects whenever the link drops.
Statuses set over HTTP are kept in a durable store (\fB[store] path\fR) and sent as presence to each user's contacts:
with the privileges the server grants (XEP\-0356, Prosody and ejabberd; \fB[xmpp] backend = "fanout"\fR),
or as Tigase session commands (\fBbackend = "tigase"\fR).
Held statuses survive a restart and are sent again when the link is back.
.PP
Its HTTP listener (\fB[http] listen\fR) serves the native API \fB/v1\fR, the Tigase, Matrix and Waher dialects, the status page, \fB/metrics\fR, \fB/healthz\fR and \fB/readyz\fR.
It stays in the foreground, logs to standard error (the journal under systemd), tells systemd when it is ready (\fBType=notify\fR), and runs until SIGTERM or SIGINT (see \fBSIGNALS\fR).
The configuration is read once, at start.
"#;

const COMMANDS: &str = r#".PP
Without a command, the daemon runs (see \fBDESCRIPTION\fR).
\fBcheck\-config\fR validates the configuration and exits.
The other commands are a client of a running daemon, over its API \fB/v1\fR:
it is found with \fB\-\-url\fR (or \fBEXTPRESENCE_URL\fR), else at \fB[http] listen\fR of the configuration;
the key is read from \fB\-\-key\-file\fR (or \fBEXTPRESENCE_KEY_FILE\fR, or \fBEXTPRESENCE_KEY\fR), else the configuration's first admin key with write access is used.
"#;

fn exit_status(exits: &DaemonExits) -> String {
    format!(
        r#".SH "EXIT STATUS"
.TP
\fB{EXIT_OK}\fR
The daemon stopped cleanly after SIGTERM or SIGINT; the configuration is valid (\fBcheck\-config\fR); a client command succeeded.
.TP
\fB{EXIT_REFUSED}\fR
The daemon failed at start or while running (for example the store cannot be opened: the log says why); a client command was refused by the daemon (its message is printed).
.TP
\fB{EXIT_USAGE}\fR
The command line is wrong (an unknown option, a missing argument), or a client command cannot be run as given (no key found, a malformed \fB\-\-url\fR or duration).
.TP
\fB{EXIT_UNREACHABLE}\fR
A client command could not reach the daemon.
.TP
\fB{config}\fR
The configuration is invalid (EX_USAGE), for the daemon and \fBcheck\-config\fR: the message names the file and line, or the environment variable, the setting and what it accepts.
.TP
\fB{bind}\fR
The daemon cannot listen on \fB[http] listen\fR (EX_UNAVAILABLE): the address is in use or not local.
.PP
Ended by a signal it does not handle (SIGKILL), the daemon has no exit status: a shell shows 128 plus the signal number, systemd the signal.
"#,
        config = exits.config,
        bind = exits.bind,
    )
}

const FILES: &str = r#".SH FILES
.TP
\fI/etc/extpresence/extpresence.toml\fR
The configuration (TOML), the default of \fB\-\-config\fR.
Unknown settings and values of the wrong type are refused.
A commented example is installed there by the package.
.TP
\fI/etc/extpresence/component\-secret\fR
The component secret shared with the XMPP server; readable by root only.
The unit hands it to the daemon as a systemd credential (\fBsecret_file\fR).
.TP
\fI/etc/extpresence/api\-key\fR
The admin API key; readable by root only; handed over the same way (\fBapi_key_files\fR).
.TP
\fI/var/lib/extpresence/statuses.redb\fR
The store of held statuses and tokens (\fB[store] path\fR); the webhook outbox is beside it, \fIstatuses.redb.webhooks\fR.
Under the unit's dynamic user they are in \fI/var/lib/private/extpresence/\fR, reached through that link.
.TP
\fI/lib/systemd/system/extpresence.service\fR
The systemd unit: it runs \fBcheck\-config\fR, then the daemon; it does not start before both secret files exist.
.TP
\fI/usr/share/doc/extpresence/\fR
README.md (the full guide), README.Debian (first steps), and the server snippets under \fIexamples/\fR (Prosody, ejabberd, Tigase).
"#;

const ENVIRONMENT: &str = r#".SH ENVIRONMENT
.TP
\fBEXTPRESENCE__\fISECTION\fB__\fIKEY\fR
Overrides the setting \fIkey\fR of \fB[\fIsection\fB]\fR in the configuration, for example \fBEXTPRESENCE__HTTP__LISTEN=127.0.0.1:9090\fR.
Numbers are written as digits (\fBEXTPRESENCE__XMPP__KEEPALIVE_SECS=30\fR), lists comma\-separated (\fBEXTPRESENCE__XMPP__DOMAINS=a.org,b.org\fR).
A variable that names no setting, or whose value is refused, stops the daemon with a message naming the variable.
The unit sets \fBEXTPRESENCE__XMPP__SECRET_FILE\fR and \fBEXTPRESENCE__HTTP__API_KEY_FILES\fR to its credentials.
.TP
\fBEXTPRESENCE_URL\fR
The running daemon for the client commands, like \fB\-\-url\fR.
.TP
\fBEXTPRESENCE_KEY_FILE\fR
A file whose first line is the API key for the client commands, like \fB\-\-key\-file\fR.
.TP
\fBEXTPRESENCE_KEY\fR
The API key itself for the client commands, when no key file is given.
.TP
\fBRUST_LOG\fR
Which log lines are written, for example \fBdebug\fR or \fBextpresence=debug,info\fR (default \fBinfo\fR).
\fB[log] format = "json"\fR writes them as JSON objects.
.TP
\fBNOTIFY_SOCKET\fR
Set by systemd: the daemon sends READY=1 once its store is open and HTTP is listening, and STOPPING=1 when it begins to stop.
"#;

const SIGNALS: &str = r#".SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
A clean stop: the daemon stops accepting HTTP connections and lets the requests under way finish (up to 5 seconds),
ends the event streams, publishes the last events and commits the webhook outbox,
sends \fIunavailable\fR for every held resource so that contacts see them go (unless \fB[status] on_shutdown = "keep"\fR),
closes the XMPP stream, and exits with 0.
Held statuses stay in the store and are sent again at the next start.
This is what \fBsystemctl stop\fR sends.
For \fBwatch\fR, SIGINT (Ctrl\-C) ends the command with 0.
.TP
\fBSIGHUP\fR
Connects the XMPP component link again at once (what is held is sent again after the handshake; no \fIunavailable\fR is sent).
Servers grant XEP\-0356 privileges when the component connects: after fixing them in the server's config, this applies them without waiting for the next retry.
The configuration is not reloaded: it is read only at start; to apply a change, restart the daemon (\fBsystemctl restart extpresence\fR).
"#;

const EXAMPLES: &str = r#".SH EXAMPLES
Check the configuration, then start the daemon under systemd and follow its log:
.PP
.RS
.nf
extpresence check\-config \-\-config /etc/extpresence/extpresence.toml
systemctl start extpresence
journalctl \-u extpresence \-f
.fi
.RE
.PP
Run the daemon in the foreground with a local configuration, on another HTTP port, with more log:
.PP
.RS
.nf
EXTPRESENCE__HTTP__LISTEN=127.0.0.1:9090 RUST_LOG=debug extpresence \-\-config ./extpresence.toml
.fi
.RE
.PP
On the server host (the URL and an admin key come from the configuration), set a status for 45 minutes, show it, then clear it:
.PP
.RS
.nf
extpresence set alice@example.com away "On the phone" \-\-expires 45m
extpresence get alice@example.com
extpresence clear alice@example.com
.fi
.RE
.PP
From another host, watch the events of one domain:
.PP
.RS
.nf
extpresence \-\-url http://status.example.com:8080 \-\-key\-file ~/.extpresence\-key watch \-\-domain example.com
.fi
.RE
.PP
Mint a read\-only token for alice, valid 30 days (shown once), list the tokens, revoke one:
.PP
.RS
.nf
extpresence token create alice@example.com \-\-access read \-\-expires 30d
extpresence token list
extpresence token revoke ID
.fi
.RE
"#;

const SEE_ALSO: &str = r#".SH "SEE ALSO"
.BR systemctl (1),
.BR journalctl (1),
.BR prosodyctl (1),
.BR ejabberdctl (8);
\fI/usr/share/doc/extpresence/README.md\fR.
"#;
