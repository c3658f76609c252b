//! The io_uring SIP transport pool (UDP, TCP, TLS). Work in progress (issue 4).
