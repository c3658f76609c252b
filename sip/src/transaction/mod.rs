//! RFC 3261 §17 transactions (scaffold).
pub mod fsm;
pub mod time;
