//! systemd readiness notifications (`Type=notify`): `READY=1` once the store is open and HTTP is
//! listening, `STOPPING=1` when shutdown begins. A no-op when `NOTIFY_SOCKET` is not set.

use std::os::unix::net::UnixDatagram;

use tracing::{debug, warn};

/// Send `state` (e.g. `"READY=1"`) to the service manager, if there is one.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let result = UnixDatagram::unbound().and_then(|socket| {
        if let Some(name) = path.strip_prefix('@') {
            // Abstract socket namespace.
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(state.as_bytes(), &addr)
        } else {
            socket.send_to(state.as_bytes(), &path)
        }
    });
    match result {
        Ok(_) => debug!(state, "notified the service manager"),
        Err(e) => warn!(error = %e, socket = %path, state, "cannot notify the service manager"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        // The variable is process-wide; this is the only test that sets it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
