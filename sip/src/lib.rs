//! sans-IO SIP core.
