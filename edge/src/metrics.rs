//! Prometheus metrics and HdrHistogram interval logs. Work in progress (issue 4).
