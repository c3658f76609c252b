//! sans-IO privacy B2BUA core (issue 5). Work in progress.
