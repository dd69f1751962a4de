//! The standard `process_*` series every Prometheus exporter has (CPU time, memory, file
//! descriptors, start time, threads; read from `/proc` at scrape time on Linux, absent
//! elsewhere) and `gateway_build_info`, the build's identity as labels on a constant 1.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Encodes the process and build series on each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut build = encoder.encode_descriptor(
            "gateway_build_info",
            "The gateway's version, commit and CPU kernels, as labels; the value is 1.",
            None,
            MetricType::Gauge,
        )?;
        let labels = [
            ("version", crate::build::VERSION),
            ("commit", crate::build::COMMIT),
            ("cpu_kernels", local_engine::cpu_kernels()),
        ];
        ConstGauge::new(1i64).encode(build.encode_family(&labels)?)?;
        #[cfg(target_os = "linux")]
        encode_process(&mut encoder)?;
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn encode_process(encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    use procfs::process::{LimitValue, Process};

    // A failed read of /proc leaves the series out of this scrape rather than failing it.
    let Ok(me) = Process::myself() else {
        return Ok(());
    };
    let Ok(stat) = me.stat() else {
        return Ok(());
    };
    let ticks = procfs::ticks_per_second() as f64;
    let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64| {
        let metric = ConstGauge::new(value);
        metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
    };
    let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
    cpu.encode(encoder.encode_descriptor(
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds.",
        None,
        MetricType::Counter,
    )?)?;
    gauge(
        encoder,
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        (stat.rss * procfs::page_size()) as f64,
    )?;
    gauge(
        encoder,
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        stat.vsize as f64,
    )?;
    gauge(
        encoder,
        "process_threads",
        "Number of OS threads in the process.",
        stat.num_threads as f64,
    )?;
    if let Ok(boot) = procfs::boot_time_secs() {
        gauge(
            encoder,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            boot as f64 + stat.starttime as f64 / ticks,
        )?;
    }
    if let Ok(open) = me.fd_count() {
        gauge(
            encoder,
            "process_open_fds",
            "Number of open file descriptors.",
            open as f64,
        )?;
    }
    if let Ok(limits) = me.limits() {
        if let LimitValue::Value(max) = limits.max_open_files.soft_limit {
            gauge(
                encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                max as f64,
            )?;
        }
    }
    Ok(())
}
