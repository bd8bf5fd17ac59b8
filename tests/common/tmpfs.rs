//! A small tmpfs for the full-disk tests (tests run as root, CI too), unmounted on drop. Mounting
//! must work: a test that needs a full disk fails loudly, never skips.

use std::path::Path;

/// A tmpfs mounted on a fresh temp dir.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

/// The filler file [`Tmpfs::fill`] writes.
const FILLER: &str = "filler";

impl Tmpfs {
    /// Mount a tmpfs of `size` (as `mount -o size=` takes it: `4m`).
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs to mount a small tmpfs at {} (run as root): {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill it with a file until the disk says it is full (ENOSPC).
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join(FILLER)).expect("create filler");
        let chunk = vec![0xA5u8; 16 << 10];
        loop {
            match f.write_all(&chunk).and_then(|_| f.sync_all()) {
                Ok(()) => continue,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the tmpfs: expected ENOSPC, got {e}"),
            }
        }
    }

    /// Remove what [`fill`](Self::fill) wrote.
    pub fn free(&self) {
        std::fs::remove_file(self.path().join(FILLER)).expect("remove filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
