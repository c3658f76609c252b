//! Durable registrar storage (redb, group commit). Work in progress (issue 4).
