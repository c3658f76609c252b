//! sans-IO anonymous registrar (issue 4). Work in progress.
