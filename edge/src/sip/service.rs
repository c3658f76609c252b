//! The transaction user on each worker. Work in progress (issue 4).
