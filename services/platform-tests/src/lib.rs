//! Cross-service tests live in `tests/it/`: they run the workspace's service
//! binaries (`cargo build --workspace --bins` first) as real processes. This
//! library is empty.
