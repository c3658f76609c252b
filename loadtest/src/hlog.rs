//! HdrHistogram interval logs (`.hlog`), the format HdrHistogram's own tools (HistogramLogAnalyzer,
//! `HistogramLogProcessor`, hdr-plot) read. Values are nanoseconds; the log's max column is written
//! in milliseconds (`MaxValueDivisor: 1000000`), which is what those tools assume.

use std::io;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use thiserror::Error;

use crate::stats::new_total_histogram;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HlogError {
    #[error("writing the interval log: {0}")]
    Io(#[from] io::Error),
    #[error("serialising a histogram: {0}")]
    Serialize(String),
    #[error("interval log parse error at byte {0}")]
    Parse(usize),
    #[error("decoding a histogram of the log: {0}")]
    Deserialize(String),
    #[error("tag {0:?} is not a valid interval log tag")]
    BadTag(String),
}

/// One closed interval.
#[derive(Debug, Clone)]
pub struct Interval {
    /// Start, relative to the log's start time.
    pub start: Duration,
    pub length: Duration,
    pub histogram: Histogram<u64>,
}

/// Collects latencies in fixed intervals (by the caller's monotonic clock) for an interval log.
#[derive(Debug, Clone)]
pub struct HlogRecorder {
    wall_start: SystemTime,
    mono_start_ns: u64,
    interval_ns: u64,
    current_start_ns: u64,
    current: Histogram<u64>,
    intervals: Vec<Interval>,
}

impl HlogRecorder {
    /// Starts a log at `mono_now_ns` (CLOCK_MONOTONIC) with intervals of `interval`.
    #[must_use]
    pub fn new(mono_now_ns: u64, interval: Duration) -> Self {
        Self {
            wall_start: SystemTime::now(),
            mono_start_ns: mono_now_ns,
            interval_ns: u64::try_from(interval.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            current_start_ns: mono_now_ns,
            current: new_total_histogram(),
            intervals: Vec::new(),
        }
    }

    /// Records one latency sample taken at `mono_now_ns`.
    pub fn record(&mut self, mono_now_ns: u64, latency_ns: u64) {
        self.roll(mono_now_ns);
        self.current.saturating_record(latency_ns.max(1));
    }

    /// Closes every interval that ended before `mono_now_ns`.
    pub fn roll(&mut self, mono_now_ns: u64) {
        while mono_now_ns >= self.current_start_ns.saturating_add(self.interval_ns) {
            self.close_current(self.interval_ns);
        }
    }

    fn close_current(&mut self, length_ns: u64) {
        let next = new_total_histogram();
        let histogram = std::mem::replace(&mut self.current, next);
        self.intervals.push(Interval {
            start: Duration::from_nanos(self.current_start_ns - self.mono_start_ns),
            length: Duration::from_nanos(length_ns),
            histogram,
        });
        self.current_start_ns = self.current_start_ns.saturating_add(length_ns);
    }

    /// Closes the open (partial) interval at `mono_now_ns` and returns all intervals.
    #[must_use]
    pub fn finish(mut self, mono_now_ns: u64) -> HlogLog {
        self.roll(mono_now_ns);
        let rest = mono_now_ns.saturating_sub(self.current_start_ns);
        if rest > 0 || !self.current.is_empty() {
            self.close_current(rest.max(1));
        }
        HlogLog {
            wall_start: self.wall_start,
            intervals: self.intervals,
        }
    }
}

/// A finished interval log.
#[derive(Debug, Clone)]
pub struct HlogLog {
    pub wall_start: SystemTime,
    pub intervals: Vec<Interval>,
}

impl HlogLog {
    /// All intervals added up.
    #[must_use]
    pub fn total(&self) -> Histogram<u64> {
        let mut t = new_total_histogram();
        for i in &self.intervals {
            // Same bounds everywhere, so add cannot fail; if it did the sample would be dropped.
            let _ = t.add(&i.histogram);
        }
        t
    }

    /// Writes the log; every interval is tagged `tag` when given.
    pub fn write<W: io::Write>(
        &self,
        out: &mut W,
        comment: &str,
        tag: Option<&str>,
    ) -> Result<(), HlogError> {
        let tag = match tag {
            Some(t) => Some(Tag::new(t).ok_or_else(|| HlogError::BadTag(t.to_owned()))?),
            None => None,
        };
        let mut serializer = V2DeflateSerializer::new();
        let mut builder = IntervalLogWriterBuilder::new();
        builder
            .add_comment(comment)
            .add_comment("values in nanoseconds (one-way latency)")
            .with_start_time(self.wall_start)
            .with_base_time(self.wall_start)
            .with_max_value_divisor(1_000_000.0);
        let mut writer = builder.begin_log_with(out, &mut serializer)?;
        writer.write_comment(
            "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"",
        )?;
        for i in &self.intervals {
            writer
                .write_histogram(&i.histogram, i.start, i.length, tag)
                .map_err(|e| HlogError::Serialize(format!("{e:?}")))?;
        }
        Ok(())
    }
}

/// Reads an interval log back: the histograms of its intervals, in order, with their tags.
pub fn read_intervals(input: &[u8]) -> Result<Vec<(Option<String>, Interval)>, HlogError> {
    let mut deserializer = hdrhistogram::serialization::Deserializer::new();
    let mut out = Vec::new();
    for entry in IntervalLogIterator::new(input) {
        let entry = entry.map_err(|e| match e {
            hdrhistogram::serialization::interval_log::LogIteratorError::ParseError { offset } => {
                HlogError::Parse(offset)
            }
        })?;
        if let LogEntry::Interval(ilh) = entry {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(ilh.encoded_histogram().trim())
                .map_err(|e| HlogError::Deserialize(format!("base64: {e}")))?;
            let histogram: Histogram<u64> =
                deserializer
                    .deserialize(&mut io::Cursor::new(bytes))
                    .map_err(|e| HlogError::Deserialize(format!("{e:?}")))?;
            out.push((
                ilh.tag().map(|t| t.as_str().to_owned()),
                Interval {
                    start: ilh.start_timestamp(),
                    length: ilh.duration(),
                    histogram,
                },
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_splits_samples_into_intervals() {
        let start = 1_000_000_000;
        let mut r = HlogRecorder::new(start, Duration::from_millis(100));
        r.record(start + 10, 5_000);
        r.record(start + 50_000_000, 7_000);
        r.record(start + 150_000_000, 9_000); // second interval
        r.record(start + 420_000_000, 11_000); // fifth interval; 3rd and 4th stay empty
        let log = r.finish(start + 450_000_000);
        assert_eq!(log.intervals.len(), 5);
        let counts: Vec<u64> = log.intervals.iter().map(|i| i.histogram.len()).collect();
        assert_eq!(counts, vec![2, 1, 0, 0, 1]);
        assert_eq!(log.intervals[4].start, Duration::from_millis(400));
        assert_eq!(log.intervals[4].length, Duration::from_millis(50));
        assert_eq!(log.total().len(), 4);
    }

    #[test]
    fn written_log_parses_back_with_the_hdrhistogram_reader() {
        let start = 5;
        let mut r = HlogRecorder::new(start, Duration::from_secs(1));
        for i in 0..1000u64 {
            r.record(start + i * 3_000_000, 20_000 + i * 100);
        }
        let log = r.finish(start + 3_000_000_000);
        let mut buf = Vec::new();
        log.write(&mut buf, "sv-rtp test", Some("a-to-b"))
            .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("#[StartTime: "), "{text}");
        assert!(text.contains("#[MaxValueDivisor: 1000000.000]"), "{text}");

        let back = read_intervals(&buf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.len(), log.intervals.len());
        let mut total = 0;
        for ((tag, got), want) in back.iter().zip(&log.intervals) {
            assert_eq!(tag.as_deref(), Some("a-to-b"));
            assert_eq!(got.histogram, want.histogram);
            // the log keeps milliseconds of precision for timestamps
            assert_eq!(got.start.as_millis(), want.start.as_millis());
            total += got.histogram.len();
        }
        assert_eq!(total, 1000);
        let max = back
            .iter()
            .map(|(_, i)| i.histogram.max())
            .max()
            .unwrap_or(0);
        assert!((119_000..=120_000).contains(&max), "{max}");
    }

    #[test]
    fn bad_tag_is_an_error() {
        let log = HlogRecorder::new(0, Duration::from_secs(1)).finish(10);
        let mut buf = Vec::new();
        assert!(matches!(
            log.write(&mut buf, "x", Some("has space")),
            Err(HlogError::BadTag(_))
        ));
    }
}
