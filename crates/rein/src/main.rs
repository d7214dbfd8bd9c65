//! The rein command-line interface.
fn main() {}
