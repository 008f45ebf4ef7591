//! Rebuilds this crate when the legacy migrations change: `sqlx::migrate!`
//! embeds `migrations/legacy/` at compile time.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations/legacy");
}
