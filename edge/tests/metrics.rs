//! `sipveil_edge::metrics`: families and values in the rendered text, label bounds, the
//! `/metrics` HTTP endpoint and HdrHistogram interval logs. No root needed; nothing is timed.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use sipveil_edge::metrics::{CONTENT_TYPE, HLOG_TAG, MAX_FREE_LABELS, Metrics};

/// The sample lines of `text` whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(str::to_owned)
    })
}

#[track_caller]
fn assert_sample(text: &str, series: &str, value: &str) {
    match sample(text, series) {
        Some(v) => assert_eq!(v, value, "value of {series}"),
        None => panic!("no sample {series} in:\n{text}"),
    }
}

#[test]
fn render_has_every_family_with_the_recorded_values() {
    let m = Metrics::with_workers(2);
    m.set_domains(&[("open.lab", "open"), ("auth.lab", "authenticated")]);

    for _ in 0..3 {
        m.request_in("REGISTER");
    }
    m.request_in("INVITE");
    m.request_in("FROBNICATE");
    m.request_in("register"); // methods are case-sensitive: not REGISTER
    m.response_out("REGISTER", 200);
    m.response_out("REGISTER", 200);
    m.response_out("REGISTER", 401);
    m.response_out("FROBNICATE", 501);
    m.response_out("INVITE", 42);
    m.registration("open.lab", "open", "ok");
    m.registration("OPEN.LAB", "open", "ok");
    m.registration("elsewhere.example", "closed", "forbidden");
    m.auth_failure("auth.lab", "wrong_password");
    m.auth_failure("nobody.example", "stale_nonce");
    m.parse_error("udp", true);
    m.parse_error("UDP", true);
    m.parse_error("tcp", false);
    m.parse_error("sctp", false);
    m.connection_opened("tcp");
    m.connection_opened("tcp");
    m.connection_opened("tls");
    m.connection_closed("tcp");
    m.connection_rejected("tcp", "per_ip_limit");
    m.worker_loop(1, 10, Duration::from_millis(1500));
    m.worker_loop(1, 5, Duration::from_millis(500));
    m.transaction_latency(0, "INVITE", Duration::from_micros(2000));
    m.transaction_latency(1, "INVITE", Duration::from_micros(30));
    m.transaction_latency(1, "OPTIONS", Duration::from_secs(10));
    m.store_commit(5, Duration::from_millis(2));
    m.store_commit(3, Duration::from_micros(300));
    m.set_bindings("open.lab", 7);
    m.set_bindings("auth.lab", 2);
    m.set_bindings("auth.lab", 1);

    let t = m.render();
    assert!(t.ends_with("# EOF\n"), "no final # EOF:\n{t}");

    assert_sample(&t, r#"sipveil_sip_requests_total{method="REGISTER"}"#, "3");
    assert_sample(&t, r#"sipveil_sip_requests_total{method="INVITE"}"#, "1");
    assert_sample(&t, r#"sipveil_sip_requests_total{method="other"}"#, "2");
    assert_sample(&t, r#"sipveil_sip_requests_total{method="BYE"}"#, "0");

    assert_sample(
        &t,
        r#"sipveil_sip_responses_total{method="REGISTER",code="200"}"#,
        "2",
    );
    assert_sample(
        &t,
        r#"sipveil_sip_responses_total{method="REGISTER",code="401"}"#,
        "1",
    );
    assert_sample(
        &t,
        r#"sipveil_sip_responses_total{method="other",code="501"}"#,
        "1",
    );
    assert_sample(
        &t,
        r#"sipveil_sip_responses_total{method="INVITE",code="other"}"#,
        "1",
    );

    assert_sample(
        &t,
        r#"sipveil_registrations_total{domain="open.lab",policy="open",result="ok"}"#,
        "2",
    );
    assert_sample(
        &t,
        r#"sipveil_registrations_total{domain="other",policy="closed",result="forbidden"}"#,
        "1",
    );
    assert!(
        !t.contains("elsewhere.example"),
        "unregistered domain leaked:\n{t}"
    );
    assert_sample(
        &t,
        r#"sipveil_auth_failures_total{domain="auth.lab",reason="wrong_password"}"#,
        "1",
    );
    assert_sample(
        &t,
        r#"sipveil_auth_failures_total{domain="other",reason="stale_nonce"}"#,
        "1",
    );

    assert_sample(
        &t,
        r#"sipveil_sip_parse_errors_total{proto="udp",answered="true"}"#,
        "2",
    );
    assert_sample(
        &t,
        r#"sipveil_sip_parse_errors_total{proto="tcp",answered="false"}"#,
        "1",
    );
    assert_sample(
        &t,
        r#"sipveil_sip_parse_errors_total{proto="other",answered="false"}"#,
        "1",
    );

    assert_sample(&t, r#"sipveil_transport_connections{proto="tcp"}"#, "1");
    assert_sample(&t, r#"sipveil_transport_connections{proto="tls"}"#, "1");
    assert_sample(
        &t,
        r#"sipveil_transport_connections_opened_total{proto="tcp"}"#,
        "2",
    );
    assert_sample(
        &t,
        r#"sipveil_transport_connections_rejected_total{proto="tcp",reason="per_ip_limit"}"#,
        "1",
    );

    assert_sample(&t, r#"sipveil_worker_messages_total{worker="0"}"#, "0");
    assert_sample(&t, r#"sipveil_worker_messages_total{worker="1"}"#, "15");
    assert_sample(
        &t,
        r#"sipveil_worker_busy_seconds_total{worker="1"}"#,
        "2.0",
    );

    assert_sample(
        &t,
        r#"sipveil_transaction_latency_seconds_count{method="INVITE"}"#,
        "2",
    );
    // 30 µs falls in the first bucket (50 µs), 2 ms in the 2.5 ms one; 10 s only in +Inf.
    assert_sample(
        &t,
        r#"sipveil_transaction_latency_seconds_bucket{le="0.00005",method="INVITE"}"#,
        "1",
    );
    assert_sample(
        &t,
        r#"sipveil_transaction_latency_seconds_bucket{le="0.0025",method="INVITE"}"#,
        "2",
    );
    assert_sample(
        &t,
        r#"sipveil_transaction_latency_seconds_bucket{le="5.0",method="OPTIONS"}"#,
        "0",
    );
    assert_sample(
        &t,
        r#"sipveil_transaction_latency_seconds_bucket{le="+Inf",method="OPTIONS"}"#,
        "1",
    );

    assert_sample(&t, "sipveil_store_commits_total", "2");
    assert_sample(&t, "sipveil_store_ops_total", "8");
    assert_sample(&t, "sipveil_store_commit_seconds_count", "2");
    assert_sample(
        &t,
        r#"sipveil_store_commit_seconds_bucket{le="0.0005"}"#,
        "1",
    );
    assert_sample(&t, r#"sipveil_registrar_bindings{domain="open.lab"}"#, "7");
    assert_sample(&t, r#"sipveil_registrar_bindings{domain="auth.lab"}"#, "1");
    assert_sample(
        &t,
        r#"sipveil_domain_info{domain="auth.lab",policy="authenticated"}"#,
        "1",
    );

    // OpenMetrics allows one `# TYPE` line per family name.
    let mut types: Vec<&str> = t
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let n = types.len();
    types.sort_unstable();
    types.dedup();
    assert_eq!(n, types.len(), "a family name has two # TYPE lines:\n{t}");
}

#[test]
fn free_form_labels_are_bounded_and_sanitised() {
    let m = Metrics::new();
    for i in 0..(MAX_FREE_LABELS + 10) {
        m.connection_rejected("tcp", &format!("reason{i}"));
    }
    m.connection_rejected("tcp", "bad\"} 1\nsipveil_fake 2");
    m.connection_rejected("tcp", "");
    let t = m.render();
    let reasons = t
        .lines()
        .filter(|l| l.starts_with("sipveil_transport_connections_rejected_total{"))
        .count();
    // MAX_FREE_LABELS distinct values plus `other`.
    assert_eq!(reasons, MAX_FREE_LABELS + 1, "{t}");
    assert_sample(
        &t,
        r#"sipveil_transport_connections_rejected_total{proto="tcp",reason="other"}"#,
        "12",
    );
    assert!(!t.contains("sipveil_fake"), "label injection:\n{t}");
}

#[test]
fn reconfigured_domains_drop_old_series() {
    let m = Metrics::new();
    m.set_domains(&[("a.lab", "open"), ("b.lab", "closed")]);
    m.set_bindings("a.lab", 3);
    m.set_bindings("b.lab", 4);
    m.set_domains(&[("a.lab", "open")]);
    m.set_bindings("b.lab", 9); // no longer configured: counted as `other`
    let t = m.render();
    assert_sample(&t, r#"sipveil_registrar_bindings{domain="a.lab"}"#, "3");
    assert_sample(&t, r#"sipveil_registrar_bindings{domain="other"}"#, "9");
    assert!(!t.contains("b.lab"), "removed domain still exported:\n{t}");
}

#[test]
fn collectors_add_lines_before_eof() {
    let m = Metrics::new();
    m.add_collector(Box::new(|out: &mut String| {
        out.push_str("# TYPE sipveil_xdp_packets counter\nsipveil_xdp_packets_total 42");
    }));
    let t = m.render();
    assert!(
        t.ends_with("sipveil_xdp_packets_total 42\n# EOF\n"),
        "collector text not before # EOF:\n{t}"
    );
    assert_eq!(t.matches("# EOF").count(), 1);
}

/// Sends `request` and returns the whole response (the server closes the connection).
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set read timeout");
    s.write_all(request).expect("send request");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read response");
    String::from_utf8(out).expect("response is UTF-8")
}

fn status(resp: &str) -> &str {
    resp.lines().next().unwrap_or("")
}

#[test]
fn http_endpoint_serves_metrics_and_refuses_the_rest() {
    let m = Metrics::new();
    m.request_in("OPTIONS");
    let addr = m
        .serve("127.0.0.1:0".parse().expect("address"))
        .expect("serve on loopback");
    assert_ne!(addr.port(), 0);

    let r = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&r), "HTTP/1.1 200 OK", "{r}");
    assert!(
        r.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
        "{r}"
    );
    let (head, body) = r.split_once("\r\n\r\n").expect("header/body separator");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .expect("numeric Content-Length");
    assert_eq!(len, body.len());
    assert_sample(body, r#"sipveil_sip_requests_total{method="OPTIONS"}"#, "1");
    assert!(body.ends_with("# EOF\n"));

    let r = http(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
    assert_eq!(status(&r), "HTTP/1.1 200 OK", "{r}");

    let r = http(addr, b"GET /other HTTP/1.1\r\n\r\n");
    assert_eq!(status(&r), "HTTP/1.1 404 Not Found", "{r}");

    let r = http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status(&r), "HTTP/1.1 405 Method Not Allowed", "{r}");
    assert!(r.contains("Allow: GET\r\n"), "{r}");

    let r = http(addr, b"\x00\xff\xfe garbage\r\n\r\n");
    assert_eq!(status(&r), "HTTP/1.1 400 Bad Request", "{r}");

    let r = http(addr, b"GET\r\n\r\n");
    assert_eq!(status(&r), "HTTP/1.1 400 Bad Request", "{r}");

    let r = http(addr, &[b'A'; 8192]);
    assert_eq!(
        status(&r),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "{r}"
    );

    // A client that sends half a request and hangs up.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /met").expect("send");
    s.shutdown(Shutdown::Both).expect("shutdown");
    drop(s);

    // Still serving.
    let r = http(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status(&r), "HTTP/1.1 200 OK", "{r}");
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sipveil-metrics-{}-{name}", std::process::id()))
}

/// Standard base64 (with padding), as the interval log encodes histograms.
fn base64_decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c:#x}"),
        }
    }
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | val(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn hlog_intervals_add_up_to_what_was_recorded() {
    let m = Metrics::with_workers(2);
    let path = temp_path("hlog");

    // Recorded before the log starts: these go into its first interval.
    for us in 1..=100u64 {
        m.transaction_latency(0, "REGISTER", Duration::from_micros(us));
    }
    m.start_hlog(&path, Duration::from_millis(5))
        .expect("start hlog");
    let again = m.start_hlog(&path, Duration::from_millis(5));
    assert_eq!(
        again.expect_err("second start must fail").kind(),
        std::io::ErrorKind::AlreadyExists
    );

    let recorders: Vec<_> = (0..3usize)
        .map(|w| {
            let m = m.clone();
            std::thread::spawn(move || {
                for i in 0..2000u64 {
                    m.transaction_latency(w, "INVITE", Duration::from_micros(10 + i));
                    if i % 500 == 0 {
                        // Let the log thread cut a few intervals meanwhile.
                        std::thread::sleep(Duration::from_millis(7));
                    }
                }
            })
        })
        .collect();
    for r in recorders {
        r.join().expect("recorder thread");
    }
    // Over the HdrHistogram range: recorded saturated, still counted.
    m.transaction_latency(1, "INVITE", Duration::from_secs(600));
    m.stop_hlog().expect("stop hlog");
    let recorded = 100 + 3 * 2000 + 1;

    // After stopping, recording continues to work and is not in the log.
    m.transaction_latency(0, "BYE", Duration::from_micros(5));

    let data = std::fs::read(&path).expect("read hlog");
    let _ = std::fs::remove_file(&path);
    let mut start_time = false;
    let mut intervals = 0;
    let mut count = 0u64;
    let mut merged: Histogram<u64> = Histogram::new(3).expect("histogram");
    for entry in IntervalLogIterator::new(&data) {
        match entry.expect("well-formed interval log") {
            LogEntry::StartTime(_) => start_time = true,
            LogEntry::BaseTime(_) => {}
            LogEntry::Interval(i) => {
                assert_eq!(i.tag().map(|t| t.as_str()), Some(HLOG_TAG));
                let bytes = base64_decode(i.encoded_histogram());
                let h: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut bytes.as_slice())
                    .expect("deserialize interval histogram");
                intervals += 1;
                count += h.len();
                merged.add(&h).expect("merge");
            }
        }
    }
    assert!(start_time, "no StartTime header");
    assert!(intervals >= 1);
    assert_eq!(count, recorded, "{intervals} intervals");
    assert_eq!(merged.min(), 1);
    assert!(
        merged.max() >= 59_000_000,
        "saturated value: {}",
        merged.max()
    );

    // Percentiles cover everything since start, including what came after stop_hlog.
    let p = m.latency_percentiles();
    let ps: Vec<f64> = p.iter().map(|(q, _)| *q).collect();
    assert_eq!(ps, [50.0, 90.0, 99.0, 99.9, 100.0]);
    assert_eq!(p[4].1, merged.max());
    assert!(p.windows(2).all(|w| w[0].1 <= w[1].1), "{p:?}");

    assert_eq!(
        m.stop_hlog().expect_err("nothing running").kind(),
        std::io::ErrorKind::NotFound
    );
    // A new log can be started after a stop.
    m.start_hlog(&path, Duration::from_millis(5))
        .expect("restart hlog");
    m.stop_hlog().expect("stop again");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn percentiles_of_known_values() {
    let m = Metrics::new();
    assert!(m.latency_percentiles().iter().all(|&(_, v)| v == 0));
    for us in 1..=1000u64 {
        m.transaction_latency(3, "REGISTER", Duration::from_micros(us));
    }
    let p = m.latency_percentiles();
    let near = |v: u64, want: u64| v.abs_diff(want) <= want / 500 + 1;
    assert!(near(p[0].1, 500), "{p:?}");
    assert!(near(p[1].1, 900), "{p:?}");
    assert!(near(p[2].1, 990), "{p:?}");
    assert!(near(p[3].1, 999), "{p:?}");
    assert!(near(p[4].1, 1000), "{p:?}");
}

#[test]
fn hlog_rejects_zero_interval_and_bad_path() {
    let m = Metrics::new();
    assert_eq!(
        m.start_hlog(&temp_path("zero"), Duration::ZERO)
            .expect_err("zero interval")
            .kind(),
        std::io::ErrorKind::InvalidInput
    );
    assert!(
        m.start_hlog(
            &PathBuf::from("/nonexistent-dir-sipveil/x.hlog"),
            Duration::from_secs(1)
        )
        .is_err()
    );
    // Neither left a log running.
    assert_eq!(
        m.stop_hlog().expect_err("nothing running").kind(),
        std::io::ErrorKind::NotFound
    );
}
