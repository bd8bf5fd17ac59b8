//! The standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, `process_start_time_seconds`), read from `/proc` by the `procfs` crate at
//! each scrape. Linux only: elsewhere the collector writes nothing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

/// Encodes this process's CPU time, memory, open files and start time at each scrape.
#[derive(Debug)]
pub struct ProcessCollector {
    /// Seconds since the epoch when the process started (fixed: read once).
    #[cfg(target_os = "linux")]
    start_time: Option<f64>,
}

impl ProcessCollector {
    /// A collector for this process.
    pub fn new() -> Self {
        Self {
            #[cfg(target_os = "linux")]
            start_time: linux::start_time(),
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    #[cfg(target_os = "linux")]
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        linux::encode(self.start_time, encoder)
    }

    #[cfg(not(target_os = "linux"))]
    fn encode(&self, _encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        Ok(())
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use procfs::process::Process;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    use prometheus_client::metrics::MetricType;

    /// Boot time plus the process's start in clock ticks since boot.
    pub fn start_time() -> Option<f64> {
        let stat = Process::myself().and_then(|p| p.stat()).ok()?;
        let boot = procfs::boot_time_secs().ok()?;
        Some(boot as f64 + stat.starttime as f64 / procfs::ticks_per_second() as f64)
    }

    /// The process metrics; any that cannot be read now are left out (logged at DEBUG).
    pub fn encode(start_time: Option<f64>, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let me = match Process::myself() {
            Ok(me) => me,
            Err(error) => {
                tracing::debug!(%error, "process metrics unavailable");
                return Ok(());
            }
        };
        match me.stat() {
            Ok(stat) => {
                let cpu = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
                ConstCounter::new(cpu).encode(e.encode_descriptor(
                    "process_cpu_seconds",
                    "Total user and system CPU time spent in seconds.",
                    None,
                    MetricType::Counter,
                )?)?;
                ConstGauge::new(stat.rss.saturating_mul(procfs::page_size())).encode(
                    e.encode_descriptor(
                        "process_resident_memory_bytes",
                        "Resident memory size in bytes.",
                        None,
                        MetricType::Gauge,
                    )?,
                )?;
            }
            Err(error) => tracing::debug!(%error, "/proc/self/stat unreadable"),
        }
        match me.fd_count() {
            Ok(n) => ConstGauge::new(n as u64).encode(e.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                MetricType::Gauge,
            )?)?,
            Err(error) => tracing::debug!(%error, "/proc/self/fd unreadable"),
        }
        if let Some(start) = start_time {
            ConstGauge::new(start).encode(e.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}
