//! The HdrHistogram interval log (`--latency-log PATH --latency-interval-ms N`): every
//! interval, one line per histogram, tagged with its name, in the standard format
//! (V2-deflate, base64) that the hdrhistogram crate and HdrHistogram's tools read.
use std::io::Write;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};

use super::Histograms;

/// Tag names may not hold spaces, commas or colons.
fn tag_of(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '_' }).collect()
}

/// Writes the header, then calls `next` every `interval` for the histograms of that
/// interval and writes them, forever (or until writing fails).
pub async fn run<W, F, Fut>(mut out: W, interval: Duration, node: u64, mut next: F) -> std::io::Result<()>
where
    W: Write,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Histograms>,
{
    let start = SystemTime::now();
    let mut serializer = V2DeflateSerializer::new();
    let mut writer = IntervalLogWriterBuilder::new()
        .add_comment(&format!("FleetLM node {node} latency log; values in µs unless the tag says otherwise"))
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1.0)
        .begin_log_with(&mut out, &mut serializer)
        .map_err(std::io::Error::other)?;
    let mut interval_start = start;
    loop {
        glommio::timer::sleep(interval).await;
        let hists = next().await;
        let now = SystemTime::now();
        let since_base = interval_start.duration_since(start).unwrap_or_default();
        let length = now.duration_since(interval_start).unwrap_or_default();
        for (name, h) in &hists {
            let tag = tag_of(name);
            writer
                .write_histogram(h, since_base, length, Tag::new(&tag))
                .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        }
        interval_start = now;
    }
}
