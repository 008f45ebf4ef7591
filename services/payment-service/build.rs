//! Rebuilds this crate when its migrations change: `sqlx::migrate!` embeds
//! `migrations/payments/` at compile time.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations/payments");
}
